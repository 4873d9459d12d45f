//! Director-wide settings the agent writes before it attaches the program.

use aya_ebpf::{macros::map, maps::Array};
use lb_common::DirectorConfig;

#[map]
static CONFIG: Array<DirectorConfig> = Array::with_max_entries(1, 0);

#[inline(always)]
pub fn get() -> Option<&'static DirectorConfig> {
    CONFIG.get(0)
}
