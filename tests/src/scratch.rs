//! A test's scratch directory under the system's temporary one: emptied when made, removed when
//! dropped.

use std::path::PathBuf;

pub struct Scratch(pub PathBuf);

impl Scratch {
    /// `xdplb-NAME-PID` in the temporary directory, empty.
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("xdplb-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    /// The path of `name` in it, as a string (for command lines).
    pub fn file(&self, name: &str) -> String {
        self.0.join(name).to_str().unwrap().to_owned()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
