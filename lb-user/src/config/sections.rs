//! A reload reads the whole file again; a large one (thousands of `[[service]]` sections) is
//! mostly services the reload does not change. The agent keeps the file it last applied, split
//! at its `[[service]]` headers, with each section's parsed services and what applying them made
//! of each service. A file read again is compared with it byte for byte from both ends: the
//! sections wholly inside the common start or the common end are taken as they are (their spans
//! moved), and only the text between is split, its sections parsed unless one is the same text
//! as a cached one (moved, or between two separate changes). Applying then skips a service whose
//! section is the same text and whose state is still what the last apply made of it, so a reload
//! that changes one service costs about one service, plus reading and comparing the file.

use std::{collections::HashMap, ops::Range, path::Path, sync::Arc};

use anyhow::Result;
use serde::Deserialize;
use toml::Spanned;

use super::{Config, ServiceConfig, Source};
use crate::state::{Service, State};

/// The services of one `[[service]]` section of a file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Section {
    #[serde(default)]
    service: Vec<Spanned<ServiceConfig>>,
}

/// The file the agent last applied ([`Source::parse_cached`], [`ParseCache::keep`]).
#[derive(Default)]
pub struct ParseCache {
    text: String,
    sections: Vec<Cached>,
}

/// One `[[service]]` section of the cached file.
struct Cached {
    range: Range<usize>,
    /// Spans in the cached file.
    services: Vec<Spanned<ServiceConfig>>,
    /// What the apply made of each of `services`.
    applied: Vec<Option<Arc<Service>>>,
}

/// A file read with the cache.
pub struct Reread {
    pub config: Config,
    /// For each of `config.services`: what the last apply made of it, when its section is the
    /// same text as then ([`Config::apply_skipping`]).
    pub applied: Vec<Option<Arc<Service>>>,
    /// Each section's range and number of services; None when the file was parsed whole.
    sections: Option<Vec<(Range<usize>, usize)>>,
    /// How many services were parsed anew (not taken from the cache).
    parsed: usize,
}

impl Reread {
    /// How many services were parsed anew (not taken from the cache): a section a failed
    /// reload left in the cache is not parsed again, though it is applied again.
    pub fn parsed(&self) -> usize {
        self.parsed
    }

    /// Which services `current` holds as applying the same text left them last time.
    /// `kept`: `current` is the very state the cache was kept with (nothing committed since),
    /// so every service taken from the cache is still the one applied: no lookups (10,000 of
    /// them were a tenth of a large file's reload).
    pub fn untouched(&self, current: &State, kept: bool) -> Vec<bool> {
        if kept {
            return self.applied.iter().map(Option::is_some).collect();
        }
        let svcs = self.config.services.iter();
        (svcs.zip(&self.applied))
            .map(|(svc, applied)| {
                applied.as_ref().is_some_and(|applied| {
                    let now = current.services.get(&svc.get_ref().addr());
                    now.is_some_and(|now| Arc::ptr_eq(now, applied))
                })
            })
            .collect()
    }
}

impl ParseCache {
    /// After `read` (of `text`) was applied, giving `state`, with the services marked in
    /// `untouched` skipped: keeps them for the next read.
    pub fn keep(&mut self, text: String, read: Reread, untouched: &[bool], state: &State) {
        self.fill(text, read, |i, s, was| match untouched.get(i) {
            // Skipped: still the same shared service.
            Some(true) => was,
            _ => state.services.get(&s.get_ref().addr()).cloned(),
        });
    }

    /// After `read` (of `text`) failed its checks or its apply: keeps its sections, each with
    /// what an earlier apply made of it (none for those parsed anew), so the file put right
    /// parses only what changed since. Whether those services are still the state's is asked
    /// of the state then ([`Reread::untouched`]).
    pub fn keep_unapplied(&mut self, text: String, read: Reread) {
        self.fill(text, read, |_, _, was| was);
    }

    /// The cache of `read`'s sections, with what `applied` says each service's apply made.
    fn fill(
        &mut self,
        text: String,
        read: Reread,
        mut applied_as: impl FnMut(
            usize,
            &Spanned<ServiceConfig>,
            Option<Arc<Service>>,
        ) -> Option<Arc<Service>>,
    ) {
        *self = Self::default();
        let Some(sections) = read.sections else {
            return;
        };
        let mut services = read.config.services.into_iter();
        let mut applied = read.applied.into_iter().enumerate();
        self.sections = sections
            .into_iter()
            .map(|(range, count)| {
                let services: Vec<_> = services.by_ref().take(count).collect();
                let applied = (services.iter().zip(applied.by_ref()))
                    .map(|(s, (i, was))| applied_as(i, s, was))
                    .collect();
                Cached {
                    range,
                    services,
                    applied,
                }
            })
            .collect();
        self.text = text;
    }
}

/// A service (and its real servers) with spans moved by `by` bytes.
fn shifted(s: Spanned<ServiceConfig>, by: isize) -> Spanned<ServiceConfig> {
    let shift = |r: Range<usize>| r.start.wrapping_add_signed(by)..r.end.wrapping_add_signed(by);
    let span = shift(s.span());
    let mut svc = s.into_inner();
    svc.reals = std::mem::take(&mut svc.reals)
        .into_iter()
        .map(|r| Spanned::new(shift(r.span()), r.into_inner()))
        .collect();
    Spanned::new(span, svc)
}

/// Where each `[[service]]` section of `text[range]` (which starts with one's header) lies; None
/// when splitting could change its meaning: a table that is not a service's own. (A multi-line
/// string, which could hold a line like a header, is looked for by the caller.)
fn split(text: &str, range: Range<usize>) -> Option<Vec<Range<usize>>> {
    let (mut starts, mut at) = (Vec::new(), range.start);
    for line in text[range.clone()].split_inclusive('\n') {
        // Only a line that starts with `[` can be a header.
        let t = line.trim_start();
        if t.starts_with('[') {
            let t = t.trim_end();
            if t == "[[service]]" {
                starts.push(at);
            } else if !t.starts_with("[[service.") && !t.starts_with("[service.") {
                return None;
            }
        } else if starts.is_empty() && !t.is_empty() {
            return None;
        }
        at += line.len();
    }
    let ends = starts.iter().skip(1).copied().chain([range.end]);
    Some(starts.iter().zip(ends).map(|(&s, e)| s..e).collect())
}

/// Whether `text[range]`, or a quote just outside it, is part of a `'''` or `"""`.
fn multi_line_string(text: &str, range: Range<usize>) -> bool {
    let bytes = text.as_bytes();
    let around = &bytes[range.start.saturating_sub(2)..(range.end + 2).min(bytes.len())];
    memchr::memmem::find(around, b"'''").is_some()
        || memchr::memmem::find(around, b"\"\"\"").is_some()
}

/// Where the top part of `text` ends: its first `[[service]]` header.
fn first_header(text: &str) -> Option<usize> {
    let mut at = 0;
    for line in text.split_inclusive('\n') {
        if line.trim() == "[[service]]" {
            return Some(at);
        }
        at += line.len();
    }
    None
}

/// A section between the kept start and end of a file read again: the same text as cached
/// section `.0`, now at `.1`; or parsed.
enum Between {
    Cached(usize, Range<usize>),
    Parsed(Range<usize>, Vec<Spanned<ServiceConfig>>),
}

/// What of the cached file a new text keeps: its first `prefix` sections where they were, its
/// last `suffix` sections moved by `shift` bytes, and the new text between them.
struct Plan {
    prefix: usize,
    suffix: usize,
    shift: isize,
    middle: Range<usize>,
}

/// How many bytes `a` and `b` have in common at their start (or `from_end`): compared a block
/// at a time, which the compiler turns into memcmp, then byte by byte in the first block that
/// differs.
fn same_bytes(a: &[u8], b: &[u8], from_end: bool) -> usize {
    const BLOCK: usize = 4096;
    let n = a.len().min(b.len());
    let (a, b) = match from_end {
        true => (&a[a.len() - n..], &b[b.len() - n..]),
        false => (&a[..n], &b[..n]),
    };
    let block = |i: usize| match from_end {
        true => n.saturating_sub((i + 1) * BLOCK)..n - i * BLOCK,
        false => i * BLOCK..((i + 1) * BLOCK).min(n),
    };
    let whole = (0..n.div_ceil(BLOCK))
        .take_while(|&i| a[block(i)] == b[block(i)])
        .count();
    if whole * BLOCK >= n {
        return n;
    }
    let (x, y) = (&a[block(whole)], &b[block(whole)]);
    let same = match from_end {
        true => x
            .iter()
            .rev()
            .zip(y.iter().rev())
            .take_while(|(p, q)| p == q)
            .count(),
        false => x.iter().zip(y).take_while(|(p, q)| p == q).count(),
    };
    whole * BLOCK + same
}

/// How many bytes `new` has in common with `old` at its start, and then at its end (the two
/// never overlap).
fn common(old: &[u8], new: &[u8]) -> (usize, usize) {
    let start = same_bytes(old, new, false);
    let end = same_bytes(old, new, true).min(old.len().min(new.len()) - start);
    (start, end)
}

/// `bytes` as text when they are UTF-8, else the line (from 1) of the first byte that is not.
/// Those in `common` with the cached text (UTF-8 already) are not checked again: only the ones
/// between, widened to whole characters of the cached text.
pub(super) fn text_like(
    old: &str,
    bytes: Vec<u8>,
    (start, end): (usize, usize),
) -> Result<String, usize> {
    let mut from = start;
    while !old.is_char_boundary(from) {
        from -= 1;
    }
    let mut old_to = old.len() - end;
    while !old.is_char_boundary(old_to) {
        old_to += 1;
    }
    let to = bytes.len() - (old.len() - old_to);
    if let Err(e) = std::str::from_utf8(&bytes[from..to]) {
        let at = from + e.valid_up_to();
        return Err(bytes[..at].iter().filter(|&&b| b == b'\n').count() + 1);
    }
    // SAFETY: bytes[..from] and bytes[to..] are the same bytes as old[..from] and old[old_to..],
    // UTF-8 ending and starting at character boundaries of `old`; bytes[from..to] was checked.
    Ok(unsafe { String::from_utf8_unchecked(bytes) })
}

fn plan(cache: &ParseCache, new: &str, (same_start, same_end): (usize, usize)) -> Option<Plan> {
    let (old, new) = (cache.text.as_bytes(), new.as_bytes());
    let n = cache.sections.len();
    let first = cache.sections.first()?;
    let shift = new.len() as isize - old.len() as isize;
    if same_start == old.len() && same_start == new.len() {
        return Some(Plan {
            prefix: n,
            suffix: 0,
            shift,
            middle: new.len()..new.len(),
        });
    }
    let line_end = |at: usize| {
        old[at..]
            .iter()
            .position(|&c| c == b'\n')
            .map_or(old.len(), |i| at + i + 1)
    };
    // The top part changed: parsed whole.
    if line_end(first.range.start) > same_start {
        return None;
    }
    // A section is kept at the start when the next one's header line is unchanged too (the new
    // text ends it where the old one did) ...
    let mut prefix = 0;
    while prefix + 1 < n && line_end(cache.sections[prefix + 1].range.start) <= same_start {
        prefix += 1;
    }
    // ... and at the end when the line break before its header is in the common end.
    let cut = old.len() - same_end;
    let mut suffix = 0;
    while suffix < n - prefix && cache.sections[n - 1 - suffix].range.start > cut {
        suffix += 1;
    }
    let start = cache.sections[prefix].range.start;
    let end = match suffix {
        0 => new.len(),
        _ => cache.sections[n - suffix]
            .range
            .start
            .wrapping_add_signed(shift),
    };
    Some(Plan {
        prefix,
        suffix,
        shift,
        middle: start..end,
    })
}

impl Source {
    /// [`Source::read`] and [`Source::parse_cached`] in one, comparing the file with the
    /// cached one once: what it has in common is neither compared nor checked for UTF-8 again.
    pub fn reread(path: &Path, cache: &mut ParseCache) -> Result<(Source, Reread)> {
        let bytes = Source::bytes(path)?;
        let same = common(cache.text.as_bytes(), &bytes);
        let src = Source::from_bytes(path, &cache.text, bytes, same)?;
        let read = src.parse_with(cache, same)?;
        Ok((src, read))
    }

    /// [`Source::parse`], taking from `cache` the sections this file has unchanged, so reading
    /// a large file again to change one service parses that service. The cache is emptied
    /// (give it back with [`ParseCache::keep`], or [`ParseCache::keep_unapplied`] when the apply
    /// fails) unless a section fails to parse; failing the checks after, it keeps this file.
    /// Files it cannot split safely are parsed whole.
    pub fn parse_cached(&self, cache: &mut ParseCache) -> Result<Reread> {
        let same = common(cache.text.as_bytes(), self.text.as_bytes());
        self.parse_with(cache, same)
    }

    /// [`Source::parse_cached`], given what the file has in common with the cached one.
    fn parse_with(&self, cache: &mut ParseCache, same: (usize, usize)) -> Result<Reread> {
        let planned = plan(cache, &self.text, same).and_then(|plan| {
            let middle = match plan.middle.is_empty() {
                true => Vec::new(),
                false if multi_line_string(&self.text, plan.middle.clone()) => return None,
                false => split(&self.text, plan.middle.clone())?,
            };
            Some((cache.sections[0].range.start, plan, middle))
        });
        let (header, plan, middle) = match planned {
            Some(planned) => planned,
            // Split whole; every section is looked for among the cached ones.
            None => {
                let end = self.text.len();
                let Some((header, sections)) = first_header(&self.text)
                    .filter(|_| !multi_line_string(&self.text, 0..end))
                    .and_then(|h| Some((h, split(&self.text, h..end)?)))
                else {
                    *cache = ParseCache::default();
                    return self.parse_whole();
                };
                let plan = Plan {
                    prefix: 0,
                    suffix: 0,
                    shift: 0,
                    middle: header..self.text.len(),
                };
                (header, plan, sections)
            }
        };
        let mut config: Config = self.deserialize(&self.text[..header], 0)?;
        if !config.services.is_empty() {
            // Services in the top part too (`service = [...]`): TOML decides how they combine.
            *cache = ParseCache::default();
            return self.parse_whole();
        }
        // A section between that is the same text as a cached one there (moved, or between two
        // separate changes) is taken from the cache; the others are parsed first, so a file
        // with an error leaves the cache as it was.
        let n = cache.sections.len();
        let candidates: HashMap<&str, usize> = (plan.prefix..n - plan.suffix)
            .map(|i| (&cache.text[cache.sections[i].range.clone()], i))
            .collect();
        let mut between = Vec::with_capacity(middle.len());
        let mut parsed = 0;
        for r in middle {
            let text = &self.text[r.clone()];
            between.push(match candidates.get(text) {
                Some(&i) => Between::Cached(i, r),
                None => {
                    let services = self.parse_section(text, r.start)?;
                    parsed += services.len();
                    Between::Parsed(r.clone(), services)
                }
            });
        }
        drop(candidates);
        let mut old: Vec<Option<Cached>> = std::mem::take(cache)
            .sections
            .into_iter()
            .map(Some)
            .collect();
        let kept = |c: Cached, by: isize| {
            let range = c.range.start.wrapping_add_signed(by)..c.range.end.wrapping_add_signed(by);
            let services: Vec<_> = match by {
                0 => c.services,
                _ => c.services.into_iter().map(|s| shifted(s, by)).collect(),
            };
            (range, services, c.applied)
        };
        let mut parts = Vec::with_capacity(plan.prefix + between.len() + plan.suffix);
        parts.extend(
            old[..plan.prefix]
                .iter_mut()
                .filter_map(Option::take)
                .map(|c| kept(c, 0)),
        );
        for b in between {
            let (range, services) = match b {
                Between::Cached(i, r) => match old[i].take() {
                    Some(c) => {
                        let by = r.start as isize - c.range.start as isize;
                        parts.push(kept(c, by));
                        continue;
                    }
                    // Two sections of the same text (a duplicate the checks name).
                    None => {
                        let services = self.parse_section(&self.text[r.clone()], r.start)?;
                        parsed += services.len();
                        (r.clone(), services)
                    }
                },
                Between::Parsed(r, services) => (r, services),
            };
            let unknown = vec![None; services.len()];
            parts.push((range, services, unknown));
        }
        let tail = old[n - plan.suffix..].iter_mut().filter_map(Option::take);
        parts.extend(tail.map(|c| kept(c, plan.shift)));
        let (mut applied, mut sections) = (Vec::new(), Vec::new());
        for (range, services, was) in parts {
            sections.push((range, services.len()));
            config.services.extend(services);
            applied.extend(was);
        }
        let mut read = Reread {
            config,
            applied,
            sections: Some(sections),
            parsed,
        };
        // What the cache held applied passed these checks when it was read.
        let known: Vec<bool> = read.applied.iter().map(Option::is_some).collect();
        if let Err(e) = self.check_skipping(&mut read.config, &known) {
            // A duplicate pasted in is the usual mistake: put right, the file parses only that.
            cache.keep_unapplied(self.text.clone(), read);
            return Err(e);
        }
        Ok(read)
    }

    /// The services of the section `text`, which starts `at` bytes into the file: spans counted
    /// from the section's start, moved to the file's.
    fn parse_section(&self, text: &str, at: usize) -> Result<Vec<Spanned<ServiceConfig>>> {
        let section = self.deserialize::<Section>(text, at)?;
        Ok((section.service.into_iter())
            .map(|s| shifted(s, at as isize))
            .collect())
    }

    fn parse_whole(&self) -> Result<Reread> {
        let config = self.parse()?;
        Ok(Reread {
            applied: vec![None; config.services.len()],
            parsed: config.services.len(),
            config,
            sections: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{common, same_bytes, text_like};

    /// `new` through [`text_like`] against `old`, as a reload reads it.
    fn like(old: &str, new: &[u8]) -> Result<String, usize> {
        text_like(old, new.to_vec(), common(old.as_bytes(), new))
    }

    #[test]
    fn a_file_read_again_is_checked_for_utf8_where_it_differs() {
        let old = "port = 80 # café\nname = \"ü\"\n";
        // Text, changed anywhere (or not at all), comes back as it was read.
        for new in [
            old.to_owned(),
            old.replace("80", "81"),
            old.replace("ü", "ö"),
            old.replace("café", "caf"),
            format!("{old}# ∞\n"),
            String::new(),
        ] {
            assert_eq!(like(old, new.as_bytes()), Ok(new));
        }
        // Not UTF-8: a stray byte between common ends, and characters cut where the common
        // start or end falls inside one (é is C3 A9, ü is C3 BC); the error is its line.
        let bad: [(&[u8], usize); 4] = [
            (b"port = \xff # caf\xc3\xa9\nname = \"\xc3\xbc\"\n", 1),
            (b"port = 80 # caf\xc3\x28\nname = \"\xc3\xbc\"\n", 1),
            (b"port = 80 # caf\xc3\xa9\nname = \"\xff\xbc\"\n", 2),
            (b"port = 80 # caf\xc3", 1),
        ];
        for (new, line) in bad {
            assert_eq!(
                like(old, new),
                Err(line),
                "{}",
                String::from_utf8_lossy(new)
            );
        }
        // With nothing cached, everything is checked.
        assert_eq!(like("", b"a = 1\nb = \xff"), Err(2));
        assert_eq!(like("", "a = 'é'".as_bytes()), Ok("a = 'é'".to_owned()));
    }

    #[test]
    fn same_bytes_counts_the_common_start_and_end() {
        let a: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(same_bytes(&a, &a, false), 10_000);
        assert_eq!(same_bytes(&a, &a, true), 10_000);
        assert_eq!(same_bytes(&a, &a[..7000], false), 7000);
        assert_eq!(same_bytes(&a, &a[3000..], true), 7000);
        assert_eq!(same_bytes(&a, &[], false), 0);
        // Around the blocks' edges, from either end.
        for at in [
            0, 1, 1807, 1808, 1809, 4095, 4096, 4097, 5903, 5904, 8191, 8192, 9999,
        ] {
            let mut b = a.clone();
            b[at] ^= 1;
            assert_eq!(same_bytes(&a, &b, false), at, "start, differing at {at}");
            assert_eq!(
                same_bytes(&a, &b, true),
                9999 - at,
                "end, differing at {at}"
            );
            // One byte more in the middle: the ends still line up.
            let mut c = a.clone();
            c.insert(at, 7);
            assert_eq!(same_bytes(&a, &c, true), 10_000 - at, "end, {at} inserted");
        }
    }
}
