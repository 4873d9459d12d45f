//! `xdplb import`: another load balancer's configuration turned into xdplb's config file, printed
//! on stdout. What cannot be carried over is reported line by line on stderr: a note when the
//! rest still converts faithfully, an error when it does not, and then nothing is printed and
//! the exit code is non-zero. Nothing is ever written anywhere else.

pub mod conf;
pub mod keepalived;

use std::{collections::HashMap, fmt, path::Path, path::PathBuf};

use anyhow::{bail, Result};
use clap::{Args, Subcommand};

use crate::{
    config::{Config, Source},
    state::State,
};
use conf::Pos;

#[derive(Args, Debug)]
pub struct ImportArgs {
    #[command(subcommand)]
    pub source: ImportSource,
}

#[derive(Subcommand, Debug)]
pub enum ImportSource {
    /// Convert keepalived's LVS configuration (its virtual_server blocks) into xdplb's config
    /// file, printed on stdout.
    ///
    /// What cannot be carried over is listed on stderr, one line each (FILE:LINE: note: ...).
    /// When something essential cannot be converted (NAT, fwmark or group virtual servers,
    /// IPv6, SCTP, a malformed file), each problem is an error line (FILE:LINE: error: ...), no
    /// configuration is printed and the exit code is 1. VRRP stays with keepalived.
    Keepalived {
        /// keepalived.conf (the files it includes are read too).
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// The interface the director receives its VIPs' traffic on; default: the one the file's
        /// vrrp_instance blocks name, if they all name the same.
        #[arg(long, short = 'i', value_name = "IF")]
        interface: Option<String>,
        /// The config id that chooses `@ID` lines (keepalived's -i); default: the host name.
        #[arg(long, value_name = "ID")]
        config_id: Option<String>,
    },
}

pub fn execute(args: ImportArgs) -> Result<()> {
    match args.source {
        ImportSource::Keepalived {
            file,
            interface,
            config_id,
        } => {
            let (text, report) =
                keepalived::import(&file, interface.as_deref(), config_id.as_deref());
            for line in report.lines() {
                eprintln!("{line}");
            }
            match text {
                Some(text) => {
                    print!("{text}");
                    Ok(())
                }
                None => bail!(
                    "{}: nothing converted: {} error(s)",
                    file.display(),
                    report.errors()
                ),
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Note,
    Error,
}

/// One line of the report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// None for a problem with a whole file (it cannot be read).
    pub at: Option<Pos>,
    /// Set when `at` is None.
    pub file: Option<PathBuf>,
    pub level: Level,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.at, &self.file) {
            (Some(at), _) => write!(f, "{at}: ")?,
            (None, Some(file)) => write!(f, "{}: ", file.display())?,
            (None, None) => {}
        }
        let level = match self.level {
            Level::Note => "note",
            Level::Error => "error",
        };
        write!(f, "{level}: {}", self.message.replace('\n', " "))
    }
}

/// What an import says about its input.
#[derive(Debug, Default)]
pub struct Report {
    pub diagnostics: Vec<Diagnostic>,
}

impl Report {
    fn push(&mut self, at: Option<&Pos>, file: Option<&Path>, level: Level, message: String) {
        let d = Diagnostic {
            at: at.cloned(),
            file: file.map(Path::to_owned),
            level,
            message,
        };
        // A setting inherited by many real servers is reported once.
        if !self.diagnostics.contains(&d) {
            self.diagnostics.push(d);
        }
    }

    pub fn note(&mut self, at: &Pos, message: impl Into<String>) {
        self.push(Some(at), None, Level::Note, message.into());
    }

    pub fn error(&mut self, at: &Pos, message: impl Into<String>) {
        self.push(Some(at), None, Level::Error, message.into());
    }

    pub fn file_error(&mut self, file: &Path, message: impl Into<String>) {
        self.push(None, Some(file), Level::Error, message.into());
    }

    pub fn file_note(&mut self, file: &Path, message: impl Into<String>) {
        self.push(None, Some(file), Level::Note, message.into());
    }

    pub fn errors(&self) -> usize {
        self.diagnostics
            .iter()
            .filter(|d| d.level == Level::Error)
            .count()
    }

    /// The lines to print, in reading order: only the errors when there are any (each one is a
    /// reason nothing was converted), else the notes.
    pub fn lines(&self) -> Vec<String> {
        let failed = self.errors() > 0;
        let mut shown: Vec<&Diagnostic> = self
            .diagnostics
            .iter()
            .filter(|d| !failed || d.level == Level::Error)
            .collect();
        shown.sort_by(|a, b| a.at.cmp(&b.at));
        shown.iter().map(ToString::to_string).collect()
    }
}

/// The config file for `config`: a header naming the source and listing the notes, then the
/// settings. It is read back with xdplb's own parser and applied to an empty state, exactly as
/// the agent would, so what is printed is a file the agent loads.
pub fn render(config: &Config, source: &Path, report: &Report) -> Result<String> {
    let mut text = format!(
        "# xdplb configuration converted by `xdplb import` from {}.\n",
        source.display()
    );
    let notes = report.lines();
    if !notes.is_empty() {
        text.push_str("# Not carried over, or carried over differently:\n");
        for note in notes {
            text.push_str(&format!("#   {note}\n"));
        }
    }
    text.push('\n');
    text.push_str(&config.to_toml()?);
    let src = Source {
        path: PathBuf::from("(converted configuration)"),
        text,
    };
    let parsed = src.parse()?;
    parsed.apply_to(&State::default(), &HashMap::new(), &src)?;
    Ok(src.text)
}

#[cfg(test)]
mod tests;
