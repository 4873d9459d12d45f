//! keepalived's configuration syntax, read the way its own parser (lib/parser.c) reads it: lines,
//! `#` and `!` comments, `"` quoted words, `{ }` blocks (a brace may share a line or stand on
//! the next one), `include` with globs relative to the including file, `@ID` conditional lines
//! and `$NAME=VALUE` parameters. The result is a tree of items, each with its file and line;
//! nothing here knows what a keyword means.

use std::{
    collections::HashMap,
    fmt,
    path::{Path, PathBuf},
    rc::Rc,
};

use super::Report;

/// Where an item comes from. Files are numbered in the order they are read, so positions sort
/// by file in that order, then by line.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pos {
    pub index: usize,
    pub file: Rc<Path>,
    pub line: usize,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// One statement: its words (the keyword first) and, for a block keyword, the items inside.
#[derive(Clone, Debug, PartialEq)]
pub struct Item {
    pub pos: Pos,
    pub words: Vec<String>,
    pub block: Option<Vec<Item>>,
}

impl Item {
    pub fn keyword(&self) -> &str {
        &self.words[0]
    }

    pub fn args(&self) -> &[String] {
        &self.words[1..]
    }

    /// The statement as written, for messages: `persistence_timeout 600`.
    pub fn text(&self) -> String {
        self.words.join(" ")
    }
}

/// An include chain this deep is a file including itself.
const MAX_INCLUDE_DEPTH: usize = 32;
/// Substitutions on one line beyond this are a parameter defined through itself.
const MAX_SUBSTITUTIONS: usize = 1000;

/// Reads `path` and the files it includes into items. Problems go to `report`; what could be read
/// is returned either way. `config_id` chooses the `@ID` lines (keepalived's `-i`); without it,
/// keepalived's default, the host name up to its first dot, is used and a note says so.
pub fn read(path: &Path, config_id: Option<&str>, report: &mut Report) -> Vec<Item> {
    let mut reader = Reader {
        report,
        defs: HashMap::new(),
        config_id: config_id.map_or_else(host_name, str::to_owned),
        config_id_given: config_id.is_some(),
        config_id_noted: false,
        files: 0,
        depth: 0,
        tokens: Vec::new(),
    };
    reader.read_file(path, None);
    let tokens = std::mem::take(&mut reader.tokens);
    let mut tokens = tokens.into_iter();
    block(&mut tokens, None, reader.report)
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().split('.').next().unwrap_or_default().to_owned())
        .unwrap_or_default()
}

#[derive(Debug)]
enum Tok {
    Word(String),
    Open,
    Close,
    /// The end of a line, which ends a statement.
    End,
}

struct Token {
    tok: Tok,
    pos: Pos,
}

struct Reader<'r> {
    report: &'r mut Report,
    /// `$NAME=VALUE` definitions: one namespace for all files, as in keepalived.
    defs: HashMap<String, String>,
    config_id: String,
    config_id_given: bool,
    config_id_noted: bool,
    files: usize,
    depth: usize,
    tokens: Vec<Token>,
}

impl Reader<'_> {
    fn read_file(&mut self, path: &Path, from: Option<&Pos>) {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                let msg = format!("cannot read {}: {e}", path.display());
                match from {
                    Some(at) => self.report.error(at, msg),
                    None => self.report.file_error(path, msg),
                }
                return;
            }
        };
        let file: Rc<Path> = Rc::from(path);
        let index = self.files;
        self.files += 1;
        let dir = path.parent().unwrap_or(Path::new("")).to_owned();
        for (n, raw) in text.lines().enumerate() {
            let pos = Pos {
                index,
                file: file.clone(),
                line: n + 1,
            };
            self.line(raw, &pos, &dir);
        }
    }

    /// One physical line: comments, conditionals, definitions, substitution, include, words.
    fn line(&mut self, raw: &str, pos: &Pos, dir: &Path) {
        let mut line = match decomment(raw) {
            Ok(l) => l,
            Err(e) => return self.report.error(pos, e),
        };
        // A conditional line may define a parameter; a substituted one may become conditional.
        for _ in 0..4 {
            if line.starts_with('@') {
                match self.conditional(&line, pos) {
                    Some(rest) => line = rest,
                    None => return,
                }
            }
            if let Some((name, value)) = definition(&line) {
                if value.ends_with('\\') {
                    return self.report.error(
                        pos,
                        format!("${name}: multi-line definitions are not supported by the importer: expand them first"),
                    );
                }
                self.defs.insert(name.to_owned(), value.to_owned());
                return;
            }
            if line.starts_with("~SEQ") || line.starts_with("~LST") {
                return self.report.error(
                    pos,
                    format!(
                        "{}: sequence blocks are not supported by the importer: expand them first",
                        &line[..4]
                    ),
                );
            }
            match self.substitute(&line, dir) {
                Ok(Some(new)) if new.trim_start().starts_with('@') => {
                    line = new.trim_start().to_owned()
                }
                Ok(Some(new)) => {
                    line = new;
                    break;
                }
                Ok(None) => break,
                Err(e) => return self.report.error(pos, e),
            }
        }
        if line.is_empty() {
            return;
        }
        if let Some((keyword, pattern)) = include(&line) {
            return self.include(keyword, pattern, pos, dir);
        }
        self.tokenize(&line, pos);
    }

    /// `@ID rest` or `@^ID rest`: `rest` if the line is for this config id.
    fn conditional(&mut self, line: &str, pos: &Pos) -> Option<String> {
        let (negated, rest) = match line[1..].strip_prefix('^') {
            Some(rest) => (true, rest),
            None => (false, &line[1..]),
        };
        if !self.config_id_given && !self.config_id_noted {
            self.config_id_noted = true;
            self.report.note(
                pos,
                format!(
                    "@ lines are read for config id '{}' (this host's name, as keepalived does): choose another with --config-id",
                    self.config_id
                ),
            );
        }
        // Nothing after the id: keepalived drops the line.
        let end = rest.find([' ', '\t'])?;
        let matches = rest[..end] == self.config_id;
        (matches != negated).then(|| rest[end..].trim_start().to_owned())
    }

    /// The line with `$NAME` and `${NAME}` replaced, recursively (a value may name others);
    /// None if nothing was replaced. Undefined names stay, as in keepalived.
    fn substitute(&self, line: &str, dir: &Path) -> Result<Option<String>, String> {
        let mut s = line.to_owned();
        let (mut from, mut count) = (0, 0);
        while let Some(off) = s[from..].find('$') {
            let at = from + off;
            match self.parameter(&s[at + 1..], dir)? {
                Some((len, value)) => {
                    s.replace_range(at..at + 1 + len, &value);
                    count += 1;
                    if count > MAX_SUBSTITUTIONS {
                        return Err(format!(
                            "parameter substitution does not end (a parameter defined through itself?): {line}"
                        ));
                    }
                }
                None => from = at + 1,
            }
        }
        Ok((count > 0).then_some(s))
    }

    /// The parameter at the start of `rest` (just after a `$`): how many bytes it takes and its
    /// value.
    fn parameter(&self, rest: &str, dir: &Path) -> Result<Option<(usize, String)>, String> {
        let braced = rest.starts_with('{');
        let name_start = usize::from(braced);
        let name: &str = {
            let r = &rest[name_start..];
            let len = r
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(r.len());
            &r[..len]
        };
        if !name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
            return Ok(None);
        }
        let after = &rest[name_start + name.len()..];
        let len = if braced {
            if after.starts_with([' ', '\t']) && matches!(name, "_RANDOM" | "_ENV") {
                return Err(format!("${{{name} ...}} is not supported by the importer"));
            }
            if !after.starts_with('}') {
                return Ok(None);
            }
            name.len() + 2
        } else {
            if !(after.is_empty() || after.starts_with([' ', '\t', ',', ')'])) {
                return Ok(None);
            }
            name.len()
        };
        let value = match (self.defs.get(name), name) {
            (Some(v), _) => v.clone(),
            (None, "_PWD") => std::fs::canonicalize(if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            })
            .unwrap_or_else(|_| dir.to_owned())
            .display()
            .to_string(),
            (None, "_INSTANCE") => self.config_id.clone(),
            (None, "_HASH") => "#".to_owned(),
            (None, "_BANG") => "!".to_owned(),
            (None, "_RANDOM" | "_ENV") => {
                return Err(format!("${name} is not supported by the importer"))
            }
            (None, _) => return Ok(None),
        };
        Ok(Some((len, value)))
    }

    fn include(&mut self, keyword: &str, pattern: &str, pos: &Pos, dir: &Path) {
        if pattern.is_empty() {
            return self.report.error(pos, format!("{keyword}: no file named"));
        }
        if pattern.contains('{') {
            return self.report.error(
                pos,
                format!("{keyword} {pattern}: brace expansion is not supported by the importer: name the files"),
            );
        }
        if self.depth >= MAX_INCLUDE_DEPTH {
            return self.report.error(
                pos,
                format!("{keyword} {pattern}: includes nested deeper than {MAX_INCLUDE_DEPTH} (does a file include itself?)"),
            );
        }
        let full: PathBuf = match Path::new(pattern).is_absolute() {
            true => pattern.into(),
            false => dir.join(pattern),
        };
        let paths = match glob::glob(&full.to_string_lossy()) {
            Ok(p) => p,
            Err(e) => {
                return self
                    .report
                    .error(pos, format!("{keyword} {pattern}: bad pattern: {e}"))
            }
        };
        let mut files: Vec<PathBuf> = paths
            .filter_map(Result::ok)
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        if files.is_empty() {
            // Plain `include` tolerates a missing file; its variants check (keepalived's rules).
            let msg = format!("{keyword} {pattern}: no file matches");
            return match keyword {
                "include" => self
                    .report
                    .note(pos, format!("{msg} (skipped, as keepalived does)")),
                _ => self.report.error(pos, msg),
            };
        }
        self.depth += 1;
        for file in files {
            self.read_file(&file, Some(pos));
        }
        self.depth -= 1;
    }

    fn tokenize(&mut self, line: &str, pos: &Pos) {
        match words(line) {
            Ok(toks) => self
                .tokens
                .extend(toks.into_iter().chain([Tok::End]).map(|tok| Token {
                    tok,
                    pos: pos.clone(),
                })),
            Err(e) => self.report.error(pos, e),
        }
    }
}

/// Splits a line into words, quoted strings (one word each, without the quotes) and braces.
fn words(line: &str) -> Result<Vec<Tok>, String> {
    fn flush(word: &mut String, toks: &mut Vec<Tok>) {
        if !word.is_empty() {
            toks.push(Tok::Word(std::mem::take(word)));
        }
    }
    let (mut toks, mut word, mut rest) = (Vec::new(), String::new(), line);
    while let Some(c) = rest.chars().next() {
        rest = &rest[c.len_utf8()..];
        match c {
            '"' => {
                flush(&mut word, &mut toks);
                let end = rest
                    .find('"')
                    .ok_or_else(|| format!("unterminated quote: {line}"))?;
                toks.push(Tok::Word(rest[..end].to_owned()));
                rest = &rest[end + 1..];
            }
            ' ' | '\t' => flush(&mut word, &mut toks),
            '{' | '}' => {
                flush(&mut word, &mut toks);
                toks.push(if c == '{' { Tok::Open } else { Tok::Close });
            }
            c => word.push(c),
        }
    }
    flush(&mut word, &mut toks);
    Ok(toks)
}

/// The line without leading blanks, comments and trailing blanks. `#` and `!` inside `"` are
/// text, and so are `\#` and `\!` outside.
fn decomment(raw: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut quoted = false;
    let mut chars = raw.trim_start_matches([' ', '\t']).chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                quoted = !quoted;
                out.push(c);
            }
            '\\' => match chars.next() {
                Some(n @ ('#' | '!')) if !quoted => out.push(n),
                Some(n) => {
                    out.push('\\');
                    out.push(n);
                }
                None => out.push('\\'),
            },
            '#' | '!' if !quoted => break,
            c => out.push(c),
        }
    }
    if quoted {
        return Err(format!("unterminated quote: {}", raw.trim()));
    }
    Ok(out.trim_end_matches([' ', '\t']).to_owned())
}

/// `$NAME=VALUE` (no blank before the `=`): the name and the value without leading blanks.
fn definition(line: &str) -> Option<(&str, &str)> {
    let rest = line.strip_prefix('$')?;
    let eq = rest.find('=')?;
    let name = &rest[..eq];
    let valid = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    valid.then(|| (name, rest[eq + 1..].trim_start_matches([' ', '\t'])))
}

/// `include FILE` and its checking variants (`includer`, `includem`, `includew`, `includeb`,
/// `includea`): the keyword and the pattern.
fn include(line: &str) -> Option<(&str, &str)> {
    let end = line.find([' ', '\t']).unwrap_or(line.len());
    let keyword = &line[..end];
    matches!(
        keyword,
        "include" | "includer" | "includem" | "includew" | "includeb" | "includea"
    )
    .then(|| (keyword, line[end..].trim()))
}

/// The items up to the `}` closing the block opened at `open` (None: the whole file).
fn block(
    tokens: &mut std::vec::IntoIter<Token>,
    open: Option<&Pos>,
    report: &mut Report,
) -> Vec<Item> {
    let mut items: Vec<Item> = Vec::new();
    let mut words: Vec<String> = Vec::new();
    let mut start: Option<Pos> = None;
    let finish = |items: &mut Vec<Item>, words: &mut Vec<String>, start: &mut Option<Pos>| {
        if let Some(pos) = start.take() {
            items.push(Item {
                pos,
                words: std::mem::take(words),
                block: None,
            });
        }
    };
    loop {
        let Some(Token { tok, pos }) = tokens.next() else {
            finish(&mut items, &mut words, &mut start);
            if let Some(open) = open {
                report.error(open, "'{' is never closed".to_owned());
            }
            return items;
        };
        match tok {
            Tok::Word(w) => {
                start.get_or_insert(pos);
                words.push(w);
            }
            Tok::End => finish(&mut items, &mut words, &mut start),
            Tok::Open => {
                finish(&mut items, &mut words, &mut start);
                // The block of the statement before, on its line or the next.
                let inner = block(tokens, Some(&pos), report);
                match items.last_mut() {
                    Some(last) if last.block.is_none() => last.block = Some(inner),
                    _ => report.error(&pos, "'{' without a keyword before it".to_owned()),
                }
            }
            Tok::Close => {
                finish(&mut items, &mut words, &mut start);
                if open.is_some() {
                    return items;
                }
                report.error(&pos, "'}' without a '{' before it".to_owned());
            }
        }
    }
}
