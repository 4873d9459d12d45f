//! What older versions left pinned, made as they made it, for the tests of an agent adopting
//! their datapath: their kernel LRU hashes, their reply index placed by the whole flow, and the
//! kernel ring buffer their datapath wrote its sync events into.

use std::os::fd::{AsFd as _, AsRawFd as _};

use lb_common::{FlowKey, SyncEvent};

/// Creates and pins a kernel LRU hash as versions before the set-associative tables made their
/// connection table (FlowKey -> Conn) and their templates (TemplateKey -> Template), holding
/// one entry.
pub fn pin_lru_table<K: aya::Pod, V: aya::Pod>(path: &std::path::Path, key: &K, value: &V) {
    const BPF_MAP_TYPE_LRU_HASH: u32 = 9;
    let map = pin_map(
        path,
        BPF_MAP_TYPE_LRU_HASH,
        std::mem::size_of::<K>() as u32,
        std::mem::size_of::<V>() as u32,
        1024,
        lb_common::BPF_F_NO_COMMON_LRU,
    );
    let mut table: aya::maps::HashMap<_, K, V> =
        aya::maps::HashMap::try_from(aya::maps::Map::LruHashMap(map)).unwrap();
    table.insert(key, value, 0).unwrap();
}

/// Creates and pins the reply index as the versions before this one's made it: a table of the
/// connection table's layout whose replies were placed by their whole flow. One reply in it,
/// in the slot those versions put it in.
pub fn pin_placed_replies(path: &std::path::Path, key: &FlowKey, value: &lb_common::NatReply) {
    use lb_common::conn_table::{self, ReplyBucket};
    const BPF_MAP_TYPE_ARRAY: u32 = 2;
    let buckets = 1024;
    let map = pin_map(
        path,
        BPF_MAP_TYPE_ARRAY,
        4,
        std::mem::size_of::<ReplyBucket>() as u32,
        conn_table::map_entries(buckets),
        lb_common::MAP_MMAPABLE,
    );
    let shape = lb_user::datapath::conn_table::Shape {
        mask: buckets - 1,
        seed: 0x5eed_0f01_d7ab_1e00,
    };
    lb_user::datapath::conn_table::SlotTable::<lb_common::ReplyEntry>::set_up(&map, shape).unwrap();
    let place = conn_table::place(key, shape.seed, shape.mask);
    let mut bucket = ReplyBucket::default();
    bucket.slots[0] = conn_table::ReplySlot {
        tag: place.tag,
        mark: conn_table::reply_mark(true),
        key: *key,
        entry: lb_common::ReplyEntry {
            reply: *value,
            last_seen: lb_user::datapath::clock::jiffies_now().unwrap(),
        },
    };
    #[repr(C)]
    struct MapUpdate {
        map_fd: u32,
        _pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }
    const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
    let mut update = MapUpdate {
        map_fd: map.fd().as_fd().as_raw_fd() as u32,
        _pad: 0,
        key: &raw const place.bucket as u64,
        value: &raw const bucket as u64,
        flags: 0,
    };
    // SAFETY: a bpf_attr for BPF_MAP_UPDATE_ELEM whose key and value outlive the call.
    unsafe { lb_user::datapath::sys::bpf(BPF_MAP_UPDATE_ELEM, &mut update) }
        .expect("the old reply in its bucket");
}

/// Creates a map and pins it at `path`.
pub fn pin_map(
    path: &std::path::Path,
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
) -> aya::maps::MapData {
    #[repr(C)]
    #[derive(Default)]
    struct MapCreate {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        map_flags: u32,
    }
    #[repr(C)]
    struct ObjPin {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_OBJ_PIN: libc::c_long = 6;
    let mut create = MapCreate {
        map_type,
        key_size,
        value_size,
        max_entries,
        map_flags,
    };
    // SAFETY: a bpf_attr for BPF_MAP_CREATE.
    let fd = unsafe { lb_user::datapath::sys::bpf(BPF_MAP_CREATE, &mut create) }
        .expect("an old table") as i32;
    let name = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let mut pin = ObjPin {
        pathname: name.as_ptr() as u64,
        bpf_fd: fd as u32,
        file_flags: 0,
    };
    // SAFETY: a bpf_attr for BPF_OBJ_PIN with a live path string.
    unsafe { lb_user::datapath::sys::bpf(BPF_OBJ_PIN, &mut pin) }.expect("pinning the old table");
    // SAFETY: the descriptor the kernel gave above; the pin keeps the map.
    unsafe { libc::close(fd) };
    aya::maps::MapData::from_pin(path).unwrap()
}

/// Creates and pins the ring buffer (BPF_MAP_TYPE_RINGBUF, `SYNC_EVENTS`) the versions before
/// the per-CPU rings wrote their sync events into, and writes `events` into it as their
/// datapath did: a BPF program of its own, run once per event, passes it to
/// bpf_ringbuf_output (a ring buffer takes records from BPF programs only).
pub fn pin_sync_ring_buffer(path: &std::path::Path, events: &[SyncEvent]) {
    const BPF_MAP_TYPE_RINGBUF: u32 = 27;
    let map = pin_map(path, BPF_MAP_TYPE_RINGBUF, 0, 0, 1 << 16, 0);
    let map_fd = map.fd().as_fd().as_raw_fd();
    let prog = load_ring_writer(map_fd);
    for event in events {
        run_once(prog, bytemuck::bytes_of(event));
    }
    // SAFETY: the program's descriptor, loaded above; nothing else holds it.
    unsafe { libc::close(prog) };
}

/// One BPF instruction (`code`, registers, offset, immediate), as the kernel reads them.
#[repr(C)]
#[derive(Clone, Copy)]
struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: dst | (src << 4),
        off,
        imm,
    }
}

/// An XDP program that hands the first 64 bytes of its frame to bpf_ringbuf_output on map
/// `map_fd`, and passes the frame.
fn load_ring_writer(map_fd: i32) -> i32 {
    const BPF_PSEUDO_MAP_FD: u8 = 1;
    const RINGBUF_OUTPUT: i32 = 130;
    const LEN: i32 = std::mem::size_of::<SyncEvent>() as i32;
    // The frame is copied to the stack first: the helper takes no packet memory.
    let mut insns = vec![
        insn(0xbf, 6, 1, 0, 0),   // r6 = r1 (the xdp_md)
        insn(0x61, 2, 6, 0, 0),   // r2 = data
        insn(0x61, 3, 6, 4, 0),   // r3 = data_end
        insn(0xbf, 4, 2, 0, 0),   // r4 = r2
        insn(0x07, 4, 0, 0, LEN), // r4 += 64
        insn(0x2d, 4, 3, 23, 0),  // if r4 > r3 goto pass
    ];
    for i in 0..8i16 {
        insns.push(insn(0x79, 5, 2, i * 8, 0)); // r5 = *(u64 *)(r2 + 8i)
        insns.push(insn(0x7b, 10, 5, i * 8 - 64, 0)); // *(u64 *)(r10 - 64 + 8i) = r5
    }
    insns.extend([
        insn(0xbf, 2, 10, 0, 0),                     // r2 = r10
        insn(0x07, 2, 0, 0, -LEN),                   // r2 -= 64
        insn(0x18, 1, BPF_PSEUDO_MAP_FD, 0, map_fd), // r1 = the ring (two slots)
        insn(0, 0, 0, 0, 0),
        insn(0xb7, 3, 0, 0, LEN),            // r3 = 64
        insn(0xb7, 4, 0, 0, 0),              // r4 = 0 (flags)
        insn(0x85, 0, 0, 0, RINGBUF_OUTPUT), // bpf_ringbuf_output(r1, r2, r3, r4)
        insn(0xb7, 0, 0, 0, 2),              // pass: r0 = XDP_PASS
        insn(0x95, 0, 0, 0, 0),              // exit
    ]);
    assert_eq!(insns.len(), 31, "the jump to pass");
    #[repr(C)]
    #[derive(Default)]
    struct ProgLoad {
        prog_type: u32,
        insn_cnt: u32,
        insns: u64,
        license: u64,
        log_level: u32,
        log_size: u32,
        log_buf: u64,
        kern_version: u32,
        prog_flags: u32,
        prog_name: [u8; 16],
        prog_ifindex: u32,
        expected_attach_type: u32,
    }
    const BPF_PROG_LOAD: libc::c_long = 5;
    const BPF_PROG_TYPE_XDP: u32 = 6;
    let license = c"GPL";
    let mut log = vec![0u8; 4096];
    let mut load = ProgLoad {
        prog_type: BPF_PROG_TYPE_XDP,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        ..Default::default()
    };
    // SAFETY: a bpf_attr for BPF_PROG_LOAD whose instructions, license and log outlive the call.
    match unsafe { lb_user::datapath::sys::bpf(BPF_PROG_LOAD, &mut load) } {
        Ok(fd) => fd as i32,
        Err(e) => panic!(
            "the old ring's writer: {e}: {}",
            String::from_utf8_lossy(&log).trim_end_matches('\0')
        ),
    }
}

/// Runs program `prog` once on `frame` (BPF_PROG_TEST_RUN).
fn run_once(prog: i32, frame: &[u8]) {
    #[repr(C)]
    #[derive(Default)]
    struct TestRun {
        prog_fd: u32,
        retval: u32,
        data_size_in: u32,
        data_size_out: u32,
        data_in: u64,
        data_out: u64,
        repeat: u32,
        duration: u32,
    }
    const BPF_PROG_TEST_RUN: libc::c_long = 10;
    let mut run = TestRun {
        prog_fd: prog as u32,
        data_size_in: frame.len() as u32,
        data_in: frame.as_ptr() as u64,
        repeat: 1,
        ..Default::default()
    };
    // SAFETY: a bpf_attr for BPF_PROG_TEST_RUN whose frame outlives the call.
    unsafe { lb_user::datapath::sys::bpf(BPF_PROG_TEST_RUN, &mut run) }
        .expect("the old ring's writer ran");
    assert_eq!(
        run.retval, 2,
        "the old ring's writer did not pass the frame"
    );
}

/// A sync event as the versions before the per-CPU rings wrote it: `flow` bound to real server
/// `real` of service `service` just now.
pub fn bind_event(flow: FlowKey, service: u32, real: u32) -> SyncEvent {
    SyncEvent {
        flow,
        service,
        real,
        kind: lb_common::SYNC_BIND,
        _pad: [0; 3],
        flags: 0,
        time: lb_user::datapath::clock::monotonic_ns(),
    }
}
