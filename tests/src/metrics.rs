//! Scraping the agent's Prometheus metrics (`xdplb run --metrics ADDR`, `--web ADDR`) and
//! reading the OpenMetrics text back: families (`# TYPE`) and samples with their labels.

use std::collections::BTreeMap;
use std::net::SocketAddrV4;

use anyhow::{bail, Context as _, Result};

use crate::client::http_get;
use crate::Netns;

/// One sample line: `name{label="value",...} value`.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A scrape of `/metrics`, parsed.
#[derive(Clone, Debug, Default)]
pub struct Scrape {
    /// Family name -> type (`counter`, `gauge`, ...), from the `# TYPE` lines.
    pub types: BTreeMap<String, String>,
    pub samples: Vec<Sample>,
    /// The text as served.
    pub text: String,
}

impl Scrape {
    /// `GET /metrics` from `addr` inside `ns`; fails unless the answer is 200 with the
    /// exposition format's content type and parses.
    pub fn get(ns: &Netns, addr: SocketAddrV4) -> Result<Self> {
        let response = ns.run_in(|| http_get(addr, "/metrics"))?;
        if response.status != 200 {
            bail!(
                "GET http://{addr}/metrics: status {}: {}",
                response.status,
                response.body
            );
        }
        let content_type = response.header("content-type").unwrap_or_default();
        if !content_type.starts_with("application/openmetrics-text; version=1.0.0") {
            bail!("GET http://{addr}/metrics: content type {content_type:?}, not OpenMetrics text");
        }
        Self::parse(&response.body)
    }

    /// Parses the OpenMetrics text format (which must end with `# EOF`).
    pub fn parse(text: &str) -> Result<Self> {
        if !text.trim_end().ends_with("\n# EOF") {
            bail!("the metrics do not end with # EOF:\n{text}");
        }
        let mut scrape = Self {
            text: text.to_owned(),
            ..Self::default()
        };
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            let what = || format!("metrics line {}: {line:?}", n + 1);
            if let Some(comment) = line.strip_prefix('#') {
                let mut words = comment.split_whitespace();
                if words.next() == Some("TYPE") {
                    let (Some(name), Some(kind)) = (words.next(), words.next()) else {
                        bail!("{}: malformed TYPE", what());
                    };
                    // OpenMetrics names a counter family without the `_total` of its samples:
                    // keyed here by the samples' name.
                    let name = match kind {
                        "counter" => format!("{name}_total"),
                        _ => name.to_owned(),
                    };
                    scrape.types.insert(name, kind.to_owned());
                }
                continue;
            }
            if !line.is_empty() {
                scrape.samples.push(parse_sample(line).with_context(what)?);
            }
        }
        Ok(scrape)
    }

    /// The samples of family `name` whose labels include every one of `labels`.
    pub fn samples<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&str, &str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }

    /// The value of the one sample of `name` whose labels include `labels`; panics (with the
    /// scrape) unless there is exactly one.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<&Sample> = self.samples(name, labels).collect();
        match found[..] {
            [one] => one.value,
            _ => panic!(
                "{} samples of {name} with {labels:?}, expected one, in:\n{}",
                found.len(),
                self.text
            ),
        }
    }
}

/// `name value` or `name{k="v",...} value` (an optional timestamp after the value is ignored).
fn parse_sample(line: &str) -> Result<Sample> {
    let (name, labels, rest) = match line.split_once('{') {
        Some((name, rest)) => {
            let (labels, rest) = parse_labels(rest)?;
            (name, labels, rest)
        }
        None => {
            let (name, rest) = line.split_once(' ').context("no value")?;
            (name, BTreeMap::new(), rest)
        }
    };
    let value = rest.split_whitespace().next().context("no value")?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().with_context(|| format!("bad value {v:?}"))?,
    };
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// The labels after `{` up to the closing `}`, unescaped; and what follows the `}`.
fn parse_labels(text: &str) -> Result<(BTreeMap<String, String>, &str)> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    loop {
        rest = rest.trim_start_matches(',');
        if let Some(after) = rest.strip_prefix('}') {
            return Ok((labels, after));
        }
        let (name, after) = rest.split_once("=\"").context("label without =\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next().context("unterminated label value")? {
                (i, '"') => break i,
                (_, '\\') => match chars.next().context("unterminated escape")?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (_, c) => value.push(c),
            }
        };
        labels.insert(name.trim().to_owned(), value);
        rest = &after[end + 1..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_families_samples_and_escaped_labels() {
        let text = "# HELP a Things.\n# TYPE a counter\na_total{x=\"1\",y=\"q\\\"\\\\\\n\"} 7\n\
                    # TYPE b gauge\nb 2.5\n# EOF\n";
        let scrape = Scrape::parse(text).unwrap();
        assert!(
            Scrape::parse(&text.replace("# EOF\n", "")).is_err(),
            "no # EOF"
        );
        assert_eq!(scrape.types["a_total"], "counter");
        assert_eq!(scrape.types["b"], "gauge");
        assert_eq!(scrape.value("a_total", &[("y", "q\"\\\n")]), 7.0);
        assert_eq!(scrape.value("b", &[]), 2.5);
        assert_eq!(scrape.samples("a_total", &[("x", "2")]).count(), 0);
    }
}
