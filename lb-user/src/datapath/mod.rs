//! The adapter between user space and the kernel: loads the XDP object, attaches it, and reads and
//! writes its maps. It knows nothing of services or weights; the agent's state decides what to write.

mod batch;
pub mod clock;
pub mod conn_table;
mod maps;
pub mod mmap;
pub mod pin;
mod sync_ring;
pub mod sys;

use anyhow::{anyhow, bail, Context as _, Result};
use aya::{
    programs::{xdp::XdpLinkId, ProgramError, Xdp, XdpMode},
    Ebpf, EbpfLoader,
};
use lb_common::{
    map_names, program_names, Limits, DEFAULT_CONN_MAX, IPV4_PROG_DIRECTOR, IPV4_PROG_OPTIONS,
    IPV4_PROG_SLOTS, IPV6_PROG_4IN6, IPV6_PROG_NAT, IPV6_PROG_NAT_ICMP, IPV6_PROG_NAT_OUT,
    IPV6_PROG_NAT_REPLY, IPV6_PROG_PIPELINE, IPV6_PROG_SLOTS, IPV6_PROG_TOO_BIG, NAT_PROG_ICMP,
    NAT_PROG_REPLY, NAT_PROG_SLOTS,
};

pub use maps::{ConnCounts, Counters, DatapathCounters, DecapMaps, MapWriter, Maps};
pub use sync_ring::SyncRing;

/// The compiled datapath, embedded so the `xdplb` binary is all a director needs.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb"));

/// How the program is attached; `Auto` tries native and falls back to generic.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    Native,
    Generic,
    Auto,
}

/// The loaded object: its programs and maps.
pub struct Datapath {
    ebpf: Ebpf,
}

/// Settings fixed when the object is loaded.
#[derive(Clone, Copy, Debug)]
pub struct LoadOptions {
    /// Flows the connection table holds.
    pub conn_max: u32,
    /// LVS/NAT connections the reply index holds; 0: no LVS/NAT.
    pub nat_max: u32,
    /// The datapath's own debug logs (aya-log): off unless asked for, as they cost per packet.
    pub datapath_log: bool,
    /// Room for services and real servers.
    pub limits: Limits,
    /// Slots of each CPU's ring of connection-sync events; 0: [`lb_common::sync_ring_slots`].
    pub sync_slots: u32,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            conn_max: DEFAULT_CONN_MAX,
            nat_max: DEFAULT_CONN_MAX,
            datapath_log: false,
            limits: Limits::default(),
            sync_slots: 0,
        }
    }
}

impl LoadOptions {
    /// This machine's CPUs (as the kernel numbers them) and the slots of each one's sync ring.
    fn sync_rings(&self) -> (u32, u32) {
        let cpus = aya::util::nr_cpus().map_or(1, |n| n as u32);
        let slots = match self.sync_slots {
            0 => lb_common::sync_ring_slots(cpus),
            n => n.next_power_of_two(),
        };
        (cpus, slots)
    }
}

/// The maps with an entry per service id, and those with one per real-server id: sized by
/// [`Limits`] when the object is loaded.
pub const SERVICE_MAPS: [&str; 6] = [
    map_names::SERVICES,
    map_names::TABLES,
    map_names::SERVICE_STATS,
    map_names::SERVICE_OUT,
    map_names::PERSISTENCE,
    map_names::SCHED_POS,
];
pub const REAL_MAPS: [&str; 6] = [
    map_names::REALS,
    map_names::REAL_STATS,
    map_names::REAL_OUT,
    map_names::REAL_CONNS,
    map_names::REAL_LIMITS,
    map_names::REAL_EGRESS,
];

/// A loader with the maps sized as `opts` asks, the connection and template tables shaped as
/// `shapes` (a pinned table's own, or a new one's) and the datapath's logs on or off.
fn loader<'a>(opts: &LoadOptions, shapes: &'a conn_table::Shapes) -> EbpfLoader<'a> {
    let level: &'static u8 = if opts.datapath_log {
        &LOG_DEBUG
    } else {
        &LOG_OFF
    };
    let (cpus, slots) = opts.sync_rings();
    let mut loader = EbpfLoader::new();
    // The globals need not exist: `cargo xtask
    // bench --compare` loads objects built before the tables had them.
    loader
        .map_max_entries(
            map_names::CONN_TABLE,
            lb_common::conn_table::map_entries(shapes.conns.buckets()),
        )
        .map_max_entries(
            map_names::NAT_REPLY_INDEX,
            lb_common::conn_table::map_entries(shapes.replies.buckets()),
        )
        // An older build's reply index, under its name (`--compare`).
        .map_max_entries(
            map_names::PLACED_NAT_REPLIES,
            lb_common::conn_table::map_entries(shapes.replies.buckets()),
        )
        .map_max_entries(map_names::SYNC_CURSORS, cpus)
        .map_max_entries(map_names::SYNC_RING, cpus * slots)
        .map_max_entries(map_names::LRU_CONNS, opts.conn_max)
        .map_max_entries(map_names::LRU_NAT_REPLIES, opts.conn_max)
        .override_global(
            lb_common::conn_table::SEED_GLOBAL,
            &shapes.conns.seed,
            false,
        )
        .override_global(
            lb_common::conn_table::MASK_GLOBAL,
            &shapes.conns.mask,
            false,
        )
        .override_global(
            lb_common::conn_table::TEMPLATE_SEED_GLOBAL,
            &shapes.templates.seed,
            false,
        )
        .override_global(
            lb_common::conn_table::REPLY_SEED_GLOBAL,
            &shapes.replies.seed,
            false,
        )
        .override_global(
            lb_common::conn_table::REPLY_MASK_GLOBAL,
            &shapes.replies.mask,
            false,
        )
        .override_global(AYA_LOG_LEVEL, level, true);
    for name in SERVICE_MAPS {
        loader.map_max_entries(name, opts.limits.services);
    }
    for name in REAL_MAPS {
        loader.map_max_entries(name, opts.limits.reals);
    }
    loader
}

impl LoadOptions {
    /// Room for `conn_max` flows (as many LVS/NAT ones), datapath logs off.
    pub fn flows(conn_max: u32) -> Self {
        Self {
            conn_max,
            nat_max: conn_max,
            ..Self::default()
        }
    }
}

/// aya-log's level global: 0 silences every log statement of the datapath (a load and a branch).
const AYA_LOG_LEVEL: &str = "AYA_LOG_LEVEL";
const LOG_OFF: u8 = 0;
const LOG_DEBUG: u8 = 4;

/// How an agent holds its attachment.
pub enum Attachment {
    /// Pinned in bpffs: survives the agent.
    Pinned(aya::programs::links::PinnedLink),
    /// Swapped into a pinned link another agent created; the pin stays where it was.
    Adopted,
}

impl Datapath {
    /// Loads the object and the named program into the kernel, without attaching anything.
    pub fn load(program: &str, opts: LoadOptions) -> Result<Self> {
        Self::load_object(OBJECT, program, opts)
    }

    /// [`Datapath::load`] from another build's object (`cargo xtask bench --compare` times two
    /// builds side by side).
    pub fn load_object(object: &[u8], program: &str, opts: LoadOptions) -> Result<Self> {
        let shapes = conn_table::Shapes::new(opts.conn_max, opts.nat_max);
        let mut ebpf = loader(&opts, &shapes)
            .load(object)
            .context("cannot load the XDP object into the kernel")?;
        set_up_maps(&ebpf, shapes, &opts)?;
        xdp(&mut ebpf, program)?
            .load()
            .with_context(|| format!("the kernel rejected the XDP program '{program}'"))?;
        Ok(Self { ebpf })
    }

    /// Loads the director's program, and the programs it tail-calls.
    pub fn load_lb(opts: LoadOptions) -> Result<Self> {
        Self::load_lb_object(OBJECT, opts)
    }

    /// [`Datapath::load_lb`] from another build's object.
    pub fn load_lb_object(object: &[u8], opts: LoadOptions) -> Result<Self> {
        let mut datapath = Self::load_object(object, program_names::LB, opts)?;
        datapath.link_tail_programs()?;
        Ok(datapath)
    }

    /// Loads the programs the director's program tail-calls (the LVS/NAT reply and ICMP paths,
    /// the IPv6 pipeline, the IPv4 options' checker) and puts them where it calls them, and
    /// itself where the checker calls it back.
    fn link_tail_programs(&mut self) -> Result<()> {
        for (array, slot, name) in [
            (
                map_names::NAT_PROGS,
                NAT_PROG_REPLY,
                program_names::NAT_REPLY,
            ),
            (map_names::NAT_PROGS, NAT_PROG_ICMP, program_names::NAT_ICMP),
            (
                map_names::IPV6_PROGS,
                IPV6_PROG_PIPELINE,
                program_names::IPV6,
            ),
            (
                map_names::IPV6_PROGS,
                IPV6_PROG_TOO_BIG,
                program_names::IPV6_TOO_BIG,
            ),
            (
                map_names::IPV6_PROGS,
                IPV6_PROG_4IN6,
                program_names::TUN_4IN6,
            ),
            (map_names::IPV6_PROGS, IPV6_PROG_NAT, program_names::NAT6),
            (
                map_names::IPV6_PROGS,
                IPV6_PROG_NAT_REPLY,
                program_names::NAT6_REPLY,
            ),
            (
                map_names::IPV6_PROGS,
                IPV6_PROG_NAT_ICMP,
                program_names::NAT6_ICMP,
            ),
            (
                map_names::IPV6_PROGS,
                IPV6_PROG_NAT_OUT,
                program_names::NAT6_OUT,
            ),
            (
                map_names::IPV4_PROGS,
                IPV4_PROG_OPTIONS,
                program_names::IP_OPTIONS,
            ),
            (map_names::IPV4_PROGS, IPV4_PROG_DIRECTOR, program_names::LB),
        ] {
            let prog = xdp(&mut self.ebpf, name)?;
            // The director's own program (called back by the options' checker) is loaded.
            if prog.fd().is_err() {
                prog.load()
                    .with_context(|| format!("the kernel rejected the XDP program '{name}'"))?;
            }
            let fd = prog.fd()?.try_clone()?;
            let map = self
                .ebpf
                .map_mut(array)
                .ok_or_else(|| anyhow!("the XDP object has no map {array}"))?;
            aya::maps::ProgramArray::try_from(map)?
                .set(slot, &fd, 0)
                .with_context(|| format!("cannot install the XDP program '{name}'"))?;
        }
        Ok(())
    }

    /// Loads the director's program on the maps pinned in `pins`, creating and pinning those
    /// that are not there yet.
    pub fn load_lb_pinned(opts: LoadOptions, pins: &pin::Pins) -> Result<Self> {
        let paths: Vec<(&str, std::path::PathBuf)> =
            pin::PINNED_MAPS.iter().map(|m| (*m, pins.map(m))).collect();
        pins.drop_outgrown_prog_array(map_names::NAT_PROGS, NAT_PROG_SLOTS)?;
        pins.drop_outgrown_prog_array(map_names::IPV6_PROGS, IPV6_PROG_SLOTS)?;
        pins.drop_outgrown_prog_array(map_names::IPV4_PROGS, IPV4_PROG_SLOTS)?;
        let shapes = conn_table::Shapes::pinned(
            &pins.map(map_names::CONN_TABLE),
            &pins.map(map_names::TEMPLATE_TABLE),
            &pins.map(map_names::NAT_REPLY_INDEX),
            opts.conn_max,
            opts.nat_max,
        )?;
        let mut loader = loader(&opts, &shapes);
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader
            .load(OBJECT)
            .context("cannot load the XDP object into the kernel (on its pinned maps)")?;
        set_up_maps(&ebpf, shapes, &opts)?;
        xdp(&mut ebpf, program_names::LB)?
            .load()
            .context("the kernel rejected the XDP program")?;
        let mut datapath = Self { ebpf };
        datapath.link_tail_programs()?;
        Ok(datapath)
    }

    /// Attaches the director's program through the link pinned in `pins` for interface
    /// `ifindex` (`other`: its name, for another interface than the one the pins are named
    /// after): a running datapath's link gets the new program in one atomic update; otherwise a
    /// new link is attached and pinned. Returns the mode (None when adopted: the link keeps the
    /// mode it was made with).
    pub fn attach_pinned(
        &mut self,
        ifindex: u32,
        other: Option<&str>,
        mode: AttachMode,
        pins: &pin::Pins,
    ) -> Result<(Attachment, Option<AttachMode>)> {
        let prog = self.program(program_names::LB)?;
        if let Some(link) = pins.link(other)? {
            prog.attach_to_link(link)
                .context("cannot swap the new program into the pinned XDP link")?;
            return Ok((Attachment::Adopted, None));
        }
        let (id, mode) = self.attach(ifindex, mode)?;
        let link = self.program(program_names::LB)?.take_link(id)?;
        Ok((Attachment::Pinned(pins.pin_link(link, other)?), Some(mode)))
    }

    pub fn program(&mut self, name: &str) -> Result<&mut Xdp> {
        xdp(&mut self.ebpf, name)
    }

    /// Attaches the director's program to an interface; returns the mode it ended up in.
    pub fn attach(&mut self, ifindex: u32, mode: AttachMode) -> Result<(XdpLinkId, AttachMode)> {
        self.attach_program(program_names::LB, ifindex, mode)
    }

    /// Attaches a program of the object to an interface; returns the mode it ended up in.
    pub fn attach_program(
        &mut self,
        name: &str,
        ifindex: u32,
        mode: AttachMode,
    ) -> Result<(XdpLinkId, AttachMode)> {
        let prog = self.program(name)?;
        let attach = |p: &mut Xdp, m: XdpMode| p.attach_to_if_index(ifindex, m);
        match mode {
            AttachMode::Native => Ok((
                attach(prog, XdpMode::Driver).map_err(attach_error("native"))?,
                mode,
            )),
            AttachMode::Generic => Ok((
                attach(prog, XdpMode::Skb).map_err(attach_error("generic"))?,
                mode,
            )),
            AttachMode::Auto => match attach(prog, XdpMode::Driver) {
                Ok(id) => Ok((id, AttachMode::Native)),
                Err(_) => Ok((
                    attach(prog, XdpMode::Skb).map_err(attach_error("generic"))?,
                    AttachMode::Generic,
                )),
            },
        }
    }

    /// The maps, for the map writer; the Datapath keeps owning the programs.
    pub fn maps(&mut self) -> Result<Maps> {
        Maps::take(&mut self.ebpf)
    }

    /// The loaded object itself, for tools that drive programs and maps directly (benchmarks).
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// The rings the datapath writes connection-sync events into.
    pub fn sync_events(&mut self) -> Result<SyncRing> {
        SyncRing::take(&mut self.ebpf)
    }

    /// The maps of the real-server side (`xdplb decap`).
    pub fn decap_maps(&mut self) -> Result<DecapMaps> {
        DecapMaps::take(&mut self.ebpf)
    }
}

/// Gives each table the datapath has just made its header (its seed) before any program runs;
/// a pinned one has it already. Objects without a table (older builds, in benchmarks) pass.
fn set_up_maps(ebpf: &Ebpf, shapes: conn_table::Shapes, opts: &LoadOptions) -> Result<()> {
    set_up_tables(ebpf, shapes)?;
    sync_ring::set_up(ebpf, opts.sync_rings().1)
}

fn set_up_tables(ebpf: &Ebpf, shapes: conn_table::Shapes) -> Result<()> {
    set_up_table::<lb_common::Conn>(ebpf, map_names::CONN_TABLE, shapes.conns)?;
    set_up_table::<lb_common::Conn>(ebpf, map_names::TEMPLATE_TABLE, shapes.templates)?;
    set_up_table::<lb_common::ReplyEntry>(ebpf, map_names::NAT_REPLY_INDEX, shapes.replies)?;
    set_up_table::<lb_common::ReplyEntry>(ebpf, map_names::PLACED_NAT_REPLIES, shapes.replies)
}

fn set_up_table<E: lb_common::conn_table::Entry>(
    ebpf: &Ebpf,
    name: &str,
    shape: conn_table::Shape,
) -> Result<()> {
    match ebpf.map(name) {
        Some(aya::maps::Map::Array(map)) => {
            conn_table::SlotTable::<E>::set_up(map, shape).with_context(|| format!("map {name}"))
        }
        Some(_) => bail!("map {name} has an unexpected type"),
        None => Ok(()),
    }
}

fn xdp<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Xdp> {
    ebpf.program_mut(name)
        .ok_or_else(|| anyhow!("the XDP object has no program '{name}'"))?
        .try_into()
        .map_err(|e: ProgramError| anyhow!("'{name}' is not an XDP program: {e}"))
}

fn attach_error(mode: &'static str) -> impl Fn(ProgramError) -> anyhow::Error {
    move |e| {
        let detail = match &e {
            ProgramError::SyscallError(s) => s.io_error.to_string(),
            other => other.to_string(),
        };
        anyhow!("cannot attach in {mode} XDP mode: {detail} (is another XDP program attached? does the driver support {mode} XDP? try --mode auto)")
    }
}

/// A program that passes every frame, attached in native mode to an interface of the calling
/// thread's network namespace until dropped. A veth delivers frames that XDP_TX sent into it only
/// when its own end runs an XDP program; tests and the demo put this one on the director's peer.
pub struct XdpPass {
    _datapath: Datapath,
}

impl XdpPass {
    pub fn attach(ifindex: u32) -> Result<Self> {
        // The pass program needs no connection table worth the name.
        let mut datapath = Datapath::load(program_names::PASS, LoadOptions::flows(1))?;
        datapath
            .program(program_names::PASS)?
            .attach_to_if_index(ifindex, XdpMode::Driver)
            .map_err(attach_error("native"))?;
        Ok(Self {
            _datapath: datapath,
        })
    }
}
