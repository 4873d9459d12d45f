//! The XDP program loaded in the test process and run by the kernel on single frames through
//! BPF_PROG_TEST_RUN, its maps written by the same agent state and map writer `xdplb run` uses.
//! Real server 10.0.0.N has MAC 02:ee:00:00:00:N, so a frame's destination MAC names its server.

use std::net::Ipv4Addr;

use aya::programs::{ProgramError, TestRun as _, TestRunOptions};
use lb_common::{program_names, DirectorConfig, Reason};
use lb_user::{
    config::Timeouts,
    datapath::clock::director_config,
    datapath::{Datapath, LoadOptions, MapWriter as _, Maps},
    packet::FrameSpec,
    state::{apply, Mac, RealSpec, SchedulerSpec, ServiceAddr, State},
};

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;
/// The director interface's MAC: also the destination of [`FrameSpec`]'s frames by default, as the
/// datapath acts only on frames addressed to this host.
pub const DIRECTOR_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

/// The MAC the fixture gives real server 10.0.0.`n`.
pub fn real_mac(n: u8) -> [u8; 6] {
    [0x02, 0xee, 0, 0, 0, n]
}

pub fn real_addr(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, n)
}

/// The director's tunnel source address in the fixture.
pub const TUNNEL_SRC: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
pub const MTU: u32 = 1500;

/// Director settings as `xdplb run` writes them by default: MAC, timeouts, a 1500-byte MTU and
/// tunnel source 10.0.0.1.
pub fn default_config() -> DirectorConfig {
    config_with(&Timeouts::default())
}

/// [`default_config`] with another director MAC address.
pub fn default_config_for(mac: [u8; 6]) -> DirectorConfig {
    DirectorConfig {
        mac,
        ..default_config()
    }
}

/// [`default_config`] with other connection timeouts (seconds).
pub fn config_with(timeouts: &Timeouts) -> DirectorConfig {
    director_config(
        DIRECTOR_MAC,
        timeouts,
        MTU,
        lb_common::addr_from_v4(TUNNEL_SRC.octets()),
    )
    .expect("the kernel's tick rate")
}

/// Runs program `name` of `datapath` once on `frame` (BPF_PROG_TEST_RUN): the verdict and the
/// frame as it left the program.
pub fn test_run(
    datapath: &mut Datapath,
    name: &str,
    frame: &[u8],
) -> std::io::Result<(u32, Vec<u8>)> {
    test_run_on(datapath, name, frame, None)
}

/// The context (struct xdp_md) of a test run on `frame` arriving on `ingress`: data,
/// data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex; the kernel wants
/// data_end to be the frame's length.
pub fn xdp_md(frame: &[u8], ingress: Option<u32>) -> [u8; 24] {
    let mut ctx = [0u8; 24];
    ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
    ctx[12..16].copy_from_slice(&ingress.unwrap_or(0).to_ne_bytes());
    ctx
}

/// [`test_run`] as if the frame had arrived on interface `ingress` (of the calling thread's
/// network namespace) rather than the loopback device.
pub fn test_run_on(
    datapath: &mut Datapath,
    name: &str,
    frame: &[u8],
    ingress: Option<u32>,
) -> std::io::Result<(u32, Vec<u8>)> {
    let mut out = vec![0u8; frame.len() + 256];
    let ctx = xdp_md(frame, ingress);
    let prog = datapath.program(name).unwrap();
    let r = prog
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: ingress.is_some().then_some(&ctx[..]),
            ..Default::default()
        })
        .map_err(|e| match e {
            ProgramError::SyscallError(s) => s.io_error,
            other => std::io::Error::other(other.to_string()),
        })?;
    out.truncate(r.data_size_out as usize);
    Ok((r.return_value, out))
}

pub struct Fixture {
    pub datapath: Datapath,
    pub maps: Maps,
    pub state: State,
}

impl Fixture {
    /// The program with [`default_config`] and room for 65536 flows; no services yet.
    pub fn new() -> Self {
        Self::with_config(default_config())
    }

    pub fn with_config(config: DirectorConfig) -> Self {
        Self::with_options(config, LoadOptions::flows(65536))
    }

    pub fn with_options(config: DirectorConfig, opts: LoadOptions) -> Self {
        Self::with_object(lb_user::datapath::OBJECT, config, opts)
    }

    /// [`Fixture::with_options`] with another build's datapath object.
    pub fn with_object(object: &[u8], config: DirectorConfig, opts: LoadOptions) -> Self {
        // rr and wrr keep their position per CPU: a test thread that moved between test runs
        // would see two sequences interleaved.
        // SAFETY: sched_getcpu has no preconditions.
        let cpu = unsafe { libc::sched_getcpu() };
        lb_user::pktgen::pin_to_cpu(cpu.max(0) as usize).expect("pin the test thread");
        let mut datapath = Datapath::load_lb_object(object, opts)
            .map_err(|e| format!("{e:?}"))
            .expect("load the datapath");
        let mut maps = datapath.maps().unwrap();
        maps.set_config(&config).unwrap();
        Self {
            datapath,
            maps,
            state: State::default(),
        }
    }

    /// Applies a state change to the maps, as the agent does.
    pub fn change(&mut self, f: impl FnOnce(&State) -> anyhow::Result<State>) {
        let next = f(&self.state).expect("state change");
        apply(&mut self.maps, &self.state, &next).expect("apply");
        self.state = next;
    }

    pub fn add_service(&mut self, svc: ServiceAddr, spec: SchedulerSpec) {
        self.change(|s| s.add_service(svc, &spec));
    }

    /// Adds real server 10.0.0.`n` with the fixture's MAC for it.
    pub fn add_real(&mut self, svc: ServiceAddr, n: u8, weight: u32) {
        let spec = RealSpec {
            addr: Some(real_addr(n).into()),
            weight: Some(weight),
            mac: Some(Mac(real_mac(n))),
            ..Default::default()
        };
        self.change(|s| s.add_real(svc, &spec));
    }

    /// Adds a real server as `spec` says (forwarding method, MAC, weight).
    pub fn add_real_spec(&mut self, svc: ServiceAddr, spec: RealSpec) {
        self.change(|s| s.add_real(svc, &spec));
    }

    pub fn set_weight(&mut self, svc: ServiceAddr, n: u8, weight: u32) {
        let spec = RealSpec {
            addr: Some(real_addr(n).into()),
            weight: Some(weight),
            ..Default::default()
        };
        self.change(|s| s.edit_real(svc, &spec));
    }

    /// Runs the program once on `frame`: the verdict and the frame as it left the program.
    pub fn run(&mut self, frame: &[u8]) -> std::io::Result<(u32, Vec<u8>)> {
        test_run(&mut self.datapath, program_names::LB, frame)
    }

    /// [`Fixture::run`] with the frame arriving on interface `ingress`.
    pub fn run_on(&mut self, ingress: u32, frame: &[u8]) -> std::io::Result<(u32, Vec<u8>)> {
        test_run_on(&mut self.datapath, program_names::LB, frame, Some(ingress))
    }

    /// Sends `spec` through the program and returns the real server it went to (the last byte of
    /// the destination MAC), or None when it was not forwarded.
    pub fn send(&mut self, spec: &FrameSpec) -> Option<u8> {
        let (verdict, out) = self.run(&spec.build()).expect("test run");
        (verdict == XDP_TX).then_some(out[5])
    }

    /// The MAC of the real server the agent's state gives a new flow like `spec`.
    pub fn predicted_mac(&self, svc: &ServiceAddr, spec: &FrameSpec) -> [u8; 6] {
        let service = self.state.service(svc).unwrap();
        let flow = service.flow(spec.src.into(), spec.sport);
        service.pick(&flow).expect("a real server").mac.0
    }

    /// Packets counted for a pass/drop reason.
    pub fn reason(&self, r: Reason) -> u64 {
        self.maps.counters().unwrap().packets(r)
    }
}

impl Default for Fixture {
    fn default() -> Self {
        Self::new()
    }
}

/// A director's namespace for datapath tests that route (LVS/NAT): `out0` toward the clients,
/// 192.0.2.1/24, the clients 198.51.100.0/24 behind the router 192.0.2.254 (02:77:00:00:00:fe,
/// its neighbour entry pinned); `in0` toward the real servers, 192.168.10.1/24; IPv4
/// forwarding on. [`RoutedNet::with_ipv6`] adds IPv6. Each veth's other end stays unused.
pub struct RoutedNet {
    pub ns: crate::Netns,
    /// (ifindex, MAC) of `out0` and of `in0`.
    pub out0: (u32, [u8; 6]),
    pub in0: (u32, [u8; 6]),
}

impl RoutedNet {
    /// The namespace, named after `what` (the test file).
    pub fn new(what: &str) -> Self {
        crate::names::cleanup_stale();
        let ns = crate::Netns::new(format!("{}-{what}", crate::names::unique_prefix())).unwrap();
        crate::netns::veth(&ns, "out0", &ns, "out1").unwrap();
        crate::netns::veth(&ns, "in0", &ns, "in1").unwrap();
        ns.ip_batch(
            "addr add 192.0.2.1/24 dev out0\n\
             addr add 192.168.10.1/24 dev in0\n\
             route add 198.51.100.0/24 via 192.0.2.254 dev out0\n\
             neigh replace 192.0.2.254 lladdr 02:77:00:00:00:fe nud permanent dev out0\n",
        )
        .unwrap();
        ns.sysctl("net.ipv4.ip_forward", "1").unwrap();
        let mac = |dev: &str| -> [u8; 6] {
            let text = ns.mac(dev).unwrap();
            let b: Vec<u8> = text
                .split(':')
                .map(|x| u8::from_str_radix(x, 16).unwrap())
                .collect();
            b.try_into().unwrap()
        };
        let out0 = (ns.ifindex("out0").unwrap(), mac("out0"));
        let in0 = (ns.ifindex("in0").unwrap(), mac("in0"));
        Self { ns, out0, in0 }
    }

    /// IPv6 too: `out0` 2001:db8:ff::1/64 (the clients' router ::fe, routing for
    /// 2001:db8:c::/64, its neighbour entry pinned), `in0` fd00:10::1/64, IPv6 forwarding on.
    pub fn with_ipv6(self) -> Self {
        self.ns.enable_ipv6().unwrap();
        self.ns
            .ip_batch(
                "addr add 2001:db8:ff::1/64 dev out0 nodad\n\
                 addr add fd00:10::1/64 dev in0 nodad\n\
                 route add 2001:db8:c::/64 via 2001:db8:ff::fe dev out0\n",
            )
            .unwrap();
        self.ns
            .pin_neighbour("2001:db8:ff::fe", "02:77:00:00:00:fe", "out0")
            .unwrap();
        self.ns.sysctl("net.ipv6.conf.all.forwarding", "1").unwrap();
        self
    }

    /// The director's interfaces as the agent writes them (1500-byte MTU).
    pub fn ifaces(&self) -> Vec<(u32, lb_common::Iface)> {
        [self.out0, self.in0]
            .iter()
            .map(|&(index, mac)| {
                let iface = lb_common::Iface {
                    mac,
                    _pad: 0,
                    mtu: MTU,
                };
                (index, iface)
            })
            .collect()
    }
}

/// A random address a client can have, drawn from `rng`: the datapath drops the others for a
/// service (0.0.0.0/8, 127.0.0.0/8, multicast, 255.255.255.255).
pub fn random_client(rng: &mut lb_common::rng::XorShift64) -> Ipv4Addr {
    loop {
        let a = Ipv4Addr::from((rng.next() >> 32) as u32);
        if !(a.octets()[0] == 0 || a.is_loopback() || a.is_multicast() || a.is_broadcast()) {
            return a;
        }
    }
}

/// The IPv4 frame `v4`'s MACs, protocol, ports, flags and payload, from `src` to `dst` over
/// IPv6.
pub fn over_ipv6(
    v4: FrameSpec,
    src: std::net::Ipv6Addr,
    dst: std::net::Ipv6Addr,
) -> lb_user::packet::Frame6Spec {
    lb_user::packet::Frame6Spec {
        dst_mac: v4.dst_mac,
        src_mac: v4.src_mac,
        src,
        dst,
        proto: v4.proto,
        sport: v4.sport,
        dport: v4.dport,
        tcp_flags: v4.tcp_flags,
        payload: v4.payload,
        ..Default::default()
    }
}
