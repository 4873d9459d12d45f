//! The datapath's own debug logs (aya-log): silent unless asked for, and then they say what the
//! program decided.

use std::sync::{Arc, Mutex};

use lb_tests::fixture::{default_config, Fixture};
use lb_tests::require_root;
use lb_user::{
    datapath::LoadOptions,
    packet::FrameSpec,
    state::{Protocol, SchedulerSpec, ServiceAddr},
};

/// Collects the records aya-log reads from the datapath.
#[derive(Clone, Default)]
struct Collect(Arc<Mutex<Vec<String>>>);

impl log::Log for Collect {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, record: &log::Record) {
        self.0
            .lock()
            .unwrap()
            .push(format!("{} {}", record.level(), record.args()));
    }
    fn flush(&self) {}
}

/// Sends one new flow through a fixture loaded with `opts`; returns what the datapath logged.
fn logged(opts: LoadOptions) -> Vec<String> {
    let mut fx = Fixture::with_options(default_config(), opts);
    let svc = ServiceAddr {
        protocol: Protocol::Tcp,
        vip: [10, 0, 0, 100].into(),
        port: 80,
    };
    fx.add_service(svc, SchedulerSpec::default());
    fx.add_real(svc, 11, 1);
    let sink = Collect::default();
    let mut logger =
        aya_log::EbpfLogger::init_with_logger(fx.datapath.ebpf_mut(), sink.clone()).unwrap();
    assert_eq!(
        fx.send(&FrameSpec {
            src: [192, 168, 1, 7].into(),
            sport: 4242,
            ..Default::default()
        }),
        Some(11)
    );
    logger.flush();
    let lines = sink.0.lock().unwrap().clone();
    lines
}

#[test]
fn datapath_logs_are_off_unless_asked_for() {
    if !require_root() {
        return;
    }
    assert_eq!(logged(LoadOptions::flows(1024)), Vec::<String>::new());
    let on = logged(LoadOptions {
        datapath_log: true,
        ..LoadOptions::flows(1024)
    });
    assert!(
        on.iter()
            .any(|l| l.starts_with("DEBUG") && l.contains("new flow 192.168.1.7:4242")),
        "{on:?}"
    );
}
