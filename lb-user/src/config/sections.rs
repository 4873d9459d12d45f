//! A reload reads the whole file again; a large one (thousands of `[[service]]` sections) is
//! mostly services the reload does not change. The file is split at its `[[service]]` headers
//! and each section's parse is kept by the section's text, so a file read again parses only the
//! sections whose text changed. Spans are counted from the section's start and shifted, so
//! every error names the same line as a whole parse.

use std::{collections::HashMap, ops::Range};

use anyhow::Result;
use serde::Deserialize;
use toml::Spanned;

use super::{Config, ServiceConfig, Source};

/// The services of one `[[service]]` section of a file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Section {
    #[serde(default)]
    service: Vec<Spanned<ServiceConfig>>,
}

/// Parsed `[[service]]` sections by their text (a hash and the length), spans counted from the
/// section's start ([`Source::parse_cached`]).
#[derive(Default)]
pub struct ParseCache {
    pub(super) sections: HashMap<(u64, usize), Vec<Spanned<ServiceConfig>>>,
}

fn section_key(text: &str) -> (u64, usize) {
    use std::hash::{Hash as _, Hasher as _};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    (h.finish(), text.len())
}

/// A service (and its real servers) with spans counted from `at` bytes further.
fn shifted(s: &Spanned<ServiceConfig>, at: usize) -> Spanned<ServiceConfig> {
    let shift = |r: std::ops::Range<usize>| r.start + at..r.end + at;
    let mut svc = s.get_ref().clone();
    svc.reals = svc
        .reals
        .iter()
        .map(|r| Spanned::new(shift(r.span()), r.get_ref().clone()))
        .collect();
    Spanned::new(shift(s.span()), svc)
}

/// Where a file's top part ends and each `[[service]]` section (up to the next one) lies; None
/// when splitting it could change its meaning: a multi-line string (which could hold a line
/// like a header), or a table after the services that is not a service's own.
fn split_sections(text: &str) -> Option<(usize, Vec<Range<usize>>)> {
    if text.contains("'''") || text.contains("\"\"\"") {
        return None;
    }
    let (mut starts, mut at) = (Vec::new(), 0);
    for line in text.split_inclusive('\n') {
        let t = line.trim();
        if t == "[[service]]" {
            starts.push(at);
        } else if !starts.is_empty()
            && t.starts_with('[')
            && !t.starts_with("[[service.")
            && !t.starts_with("[service.")
        {
            return None;
        }
        at += line.len();
    }
    let header = *starts.first()?;
    let ends = starts.iter().skip(1).copied().chain([text.len()]);
    Some((
        header,
        starts.iter().zip(ends).map(|(&s, e)| s..e).collect(),
    ))
}

impl Source {
    /// [`Source::parse`], parsing again only the `[[service]]` sections whose text `cache` has
    /// not seen (it keeps this file's sections for the next read): reading a large file again
    /// to change one service parses that service. Files it cannot split safely are parsed
    /// whole.
    pub fn parse_cached(&self, cache: &mut ParseCache) -> Result<Config> {
        let Some((header, sections)) = split_sections(&self.text) else {
            cache.sections.clear();
            return self.parse();
        };
        let mut config: Config = self.deserialize(&self.text[..header], 0)?;
        if !config.services.is_empty() {
            // Services in the top part too (`service = [...]`): TOML decides how they combine.
            cache.sections.clear();
            return self.parse();
        }
        let mut seen = HashMap::new();
        for range in sections {
            let text = &self.text[range.clone()];
            let key = section_key(text);
            let services = match cache.sections.remove(&key) {
                Some(s) => s,
                None => self.deserialize::<Section>(text, range.start)?.service,
            };
            config
                .services
                .extend(services.iter().map(|s| shifted(s, range.start)));
            seen.insert(key, services);
        }
        cache.sections = seen;
        self.checked(config)
    }
}
