//! Tests of the network-namespace harness (`cluster_support/netns.rs`):
//! hosts reach each other over the bridge and only there, links can be
//! cut, MTU is 1500, hidden directories are invisible, kill -9 reaches the
//! program itself, shaping works as documented, and nothing is left behind.
//! Each test prints `skipped: <reason>` and passes where namespaces cannot
//! be made (not root).

#[path = "cluster_support/netns.rs"]
mod netns;

use netns::{Options, Shaping};
use std::path::Path;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(30);

/// `kiln status --join JOIN` run in `host`: whether it succeeded, and how long it took.
fn status_from(net: &netns::Net, host: usize, join: &str) -> (bool, Duration) {
    let start = Instant::now();
    let out = net.output(host, &Options::kiln().args(["status", "--join", join]), T);
    (out.status.success(), start.elapsed())
}

/// Names of the namespaces that exist now.
fn namespaces() -> Vec<String> {
    let out = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

/// Whether interface `name` exists in the root namespace.
fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// Whether process `pid` is gone (or a zombie of an orphan, dead but not
/// yet reaped by init).
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|s| s.trim_start().starts_with('Z')),
    }
}

/// Wait until `/proc/<pid>/comm` reads `comm` (the exec chain has finished).
fn wait_comm(pid: u32, comm: &str) {
    let deadline = Instant::now() + T;
    loop {
        let now = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if now.trim() == comm {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "pid {pid} is {now:?}, never {comm:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn hosts_reach_each_other_over_the_bridge_and_a_cut_link_stops_it() {
    let Some(net) = netns::require(3) else { return };
    // A driver on every host, `kiln status` (QUIC) from the next one.
    let mut joins = Vec::new();
    let mut drivers = Vec::new();
    for i in 0..3 {
        let (d, join) = net.driver(i, &[]);
        assert!(join.contains(&format!("@{}:", net.host(i).addr)), "{join}");
        drivers.push(d);
        joins.push(join);
    }
    for (i, join) in joins.iter().enumerate() {
        let from = (i + 1) % 3;
        assert!(
            status_from(&net, from, join).0,
            "host {from} cannot reach host {i}"
        );
    }

    net.link_down(1);
    let (ok, took) = status_from(&net, 1, &joins[0]);
    assert!(!ok, "status succeeded with host 1's link down");
    assert!(
        took < Duration::from_secs(25),
        "status took {took:?} to fail"
    );
    assert!(
        status_from(&net, 2, &joins[0]).0,
        "host 2 lost host 0 when host 1 was cut"
    );

    net.link_up(1);
    assert!(
        status_from(&net, 1, &joins[0]).0,
        "host 1 cannot reach host 0 after link_up"
    );
}

#[test]
fn hosts_have_no_route_out_and_their_own_loopback() {
    let Some(net) = netns::require(2) else { return };
    // No default route: connecting outside fails at once, sending nothing.
    let tcp = Options::new("bash").args(["-c", "exec 3<>/dev/tcp/1.1.1.1/80"]);
    let out = net.output(0, &tcp, T);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unreachable"), "{err}");
    assert!(!net.ip(0, &["-4", "route", "show"]).contains("default"));
    // lo is up, and 127.0.0.1 is each host's own.
    assert!(net.ip(0, &["-o", "link", "show", "lo"]).contains("UP"));
    let mut d = net.kiln(0, &["driver", "--listen", "127.0.0.1:0"]);
    let join = d.wait_for("JOIN ", T)["JOIN ".len()..].trim().to_owned();
    assert!(status_from(&net, 0, &join).0, "loopback inside host 0");
    assert!(
        !status_from(&net, 1, &join).0,
        "host 1 reached host 0's loopback"
    );
}

#[test]
fn mtu_is_1500_and_addresses_are_set() {
    let Some(net) = netns::require(2) else { return };
    for (i, h) in net.hosts().iter().enumerate() {
        let cat = Options::new("cat").arg(format!("/sys/class/net/{}/mtu", netns::IFNAME));
        let out = net.output(i, &cat, T);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "1500",
            "host {i}"
        );
        let link = net.ip(i, &["-o", "link", "show", netns::IFNAME]);
        assert!(
            link.contains("mtu 1500") && link.contains("state UP"),
            "{link}"
        );
        let addr = net.ip(i, &["-o", "-4", "addr", "show", "dev", netns::IFNAME]);
        assert!(addr.contains(&format!("{}/24", h.addr)), "{addr}");
        let veth =
            std::fs::read_to_string(format!("/sys/class/net/{}/mtu", h.veth)).expect("veth mtu");
        assert_eq!(veth.trim(), "1500");
        assert!(h.ns.starts_with(netns::NS_PREFIX) && h.veth.len() <= 15);
        assert!(h.dir.is_dir());
    }
    let bridge = std::fs::read_to_string(format!("/sys/class/net/{}/mtu", net.bridge()))
        .expect("bridge mtu");
    assert_eq!(bridge.trim(), "1500");
    assert!(net.bridge().len() <= 15);
    assert_ne!(net.host(0).dir, net.host(1).dir);
}

#[test]
fn hidden_directories_are_invisible_to_the_program_only() {
    let Some(net) = netns::require(2) else { return };
    // The "driver's data" lives in host 1's directory; a path with a space
    // and a quote checks that paths are never spliced into shell text.
    let data = net.host(1).dir.join("driver data 'x'");
    std::fs::create_dir(&data).expect("mkdir");
    std::fs::write(data.join("secret.txt"), "s").expect("write");
    let repo_data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");

    let ls = |o: Options| {
        let out = net.output(0, &o, T);
        assert!(
            out.status.success(),
            "{o:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(
        ls(Options::new("ls").arg("-A").arg(&data)).trim(),
        "secret.txt"
    );
    assert_eq!(ls(Options::new("ls").arg("-A").arg(&data).hide(&data)), "");
    if repo_data.is_dir() {
        assert!(!ls(Options::new("ls").arg("-A").arg(&repo_data)).is_empty());
        let hidden = Options::new("ls")
            .arg("-A")
            .arg(&repo_data)
            .hide(&data)
            .hide(&repo_data);
        assert_eq!(ls(hidden), "");
    }

    // While a program with hidden directories runs, the tmpfs stays in its
    // own mount namespace: the test (root namespace) still sees the data,
    // and its cwd is the host's directory.
    let script = r#"ls -A "$1"; pwd -P; echo done; exec sleep 1000"#;
    let o = Options::new("sh")
        .args(["-c", script, "sh"])
        .arg(&data)
        .hide(&data);
    let mut p = net.spawn(0, &o);
    let first = p.next_line(T);
    assert_eq!(
        first.as_deref(),
        Some(
            net.host(0)
                .dir
                .canonicalize()
                .expect("dir")
                .to_str()
                .expect("utf-8")
        )
    );
    p.wait_for("done", T);
    assert!(data.join("secret.txt").exists());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(!mounts.contains("kiln-hidden"), "hide leaked: {mounts}");
    // A missing hidden directory makes the wrapper fail (126), not the program run.
    let missing = Options::new("true").hide(net.host(0).dir.join("nope"));
    assert_eq!(net.output(0, &missing, T).status.code(), Some(126));
}

#[test]
fn kill9_kills_the_program_itself() {
    let Some(net) = netns::require(1) else { return };
    let dir = net.host(0).dir.clone();
    for o in [
        Options::new("sleep").arg("1000"),
        Options::new("sleep").arg("1000").hide(&dir),
    ] {
        let mut p = net.spawn(0, &o);
        let pid = p.pid();
        wait_comm(pid, "sleep");
        assert!(
            p.wait_exit(Duration::from_millis(50)).is_none(),
            "sleep exited"
        );
        p.kill9();
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "pid {pid} survived kill9"
        );
    }
}

#[test]
fn drop_removes_everything_even_on_panic() {
    struct Made {
        ns: Vec<String>,
        links: Vec<String>,
        dirs: Vec<std::path::PathBuf>,
        pids: Vec<u32>,
    }
    let make = |net: &netns::Net, procs: &mut Vec<netns::Proc>| {
        let mut made = Made {
            ns: Vec::new(),
            links: vec![net.bridge().to_owned()],
            dirs: Vec::new(),
            pids: Vec::new(),
        };
        for (i, h) in net.hosts().iter().enumerate() {
            // A program that forks a child the harness never sees.
            let p = net.spawn(
                i,
                &Options::new("sh").args(["-c", "sleep 1000 & echo up; exec sleep 1000"]),
            );
            made.pids.push(p.pid());
            procs.push(p);
            made.ns.push(h.ns.clone());
            made.links.push(h.veth.clone());
            made.dirs.push(h.dir.clone());
        }
        for p in procs.iter_mut() {
            p.wait_for("up", T);
        }
        // Every process in the namespaces, the forked sleeps included.
        for ns in &made.ns {
            let out = std::process::Command::new("ip")
                .args(["netns", "pids", ns])
                .output();
            let out = String::from_utf8(out.expect("ip netns pids").stdout).expect("utf-8");
            made.pids.extend(
                out.split_whitespace()
                    .map(|p| p.parse::<u32>().expect("pid")),
            );
        }
        assert!(made.pids.len() >= 2 * made.ns.len(), "{:?}", made.pids);
        made
    };
    let check = |made: &Made| {
        let now = namespaces();
        for ns in &made.ns {
            assert!(!now.contains(ns), "{ns} left behind");
        }
        for l in &made.links {
            assert!(!link_exists(l), "{l} left behind");
        }
        for d in &made.dirs {
            assert!(!d.exists(), "{d:?} left behind");
        }
        for &pid in &made.pids {
            assert!(gone(pid), "pid {pid} left running");
        }
    };

    // Plain drop; the Procs outlive the Net and must not matter.
    let Some(net) = netns::require(2) else { return };
    let mut procs = Vec::new();
    let made = make(&net, &mut procs);
    drop(net);
    check(&made);
    drop(procs);

    // Drop while unwinding from a panic.
    let slot = std::sync::Mutex::new(None);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let net = netns::require(2).expect("made a Net a moment ago");
        let mut procs = Vec::new();
        *slot.lock().expect("slot") = Some(make(&net, &mut procs));
        std::mem::forget(procs); // only the Net's drop may kill them
        panic!("expected panic: testing cleanup while unwinding");
    }));
    assert!(result.is_err());
    check(&slot.lock().expect("slot").take().expect("made"));
}

#[test]
fn stale_namespaces_and_links_of_dead_processes_are_removed() {
    let Some(net) = netns::require(1) else { return };
    // A pid that is certainly gone: a child that has exited and was reaped.
    let mut child = std::process::Command::new("true").spawn().expect("true");
    child.wait().expect("wait");
    let dead = child.id();
    let ns = netns::ns_name(dead, 7, 0);
    let bridge = netns::bridge_name(dead, 7);
    let run = |args: &[&str]| {
        let out = std::process::Command::new("ip")
            .args(args)
            .output()
            .expect("ip");
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let (veth, peer) = (netns::veth_name(dead, 7, 0), netns::veth_name(dead, 7, 1));
    // Not the harness's format (one number after the prefix): never touched.
    let foreign = format!("ktb{}", std::process::id() % 1000 + 40_000);
    run(&["netns", "add", &ns]);
    run(&["link", "add", &bridge, "type", "bridge"]);
    run(&["link", "add", &veth, "type", "veth", "peer", "name", &peer]);
    run(&["link", "add", &foreign, "type", "bridge"]);
    let dir = std::env::temp_dir().join(format!("{ns}-AbC123"));
    std::fs::create_dir_all(dir.join("sub")).expect("stale dir");
    // Our own live Net is not stale, whatever other Nets get created.
    let other = netns::require(1).expect("second Net");
    assert!(!namespaces().contains(&ns), "stale {ns} kept");
    assert!(!dir.exists(), "stale {dir:?} kept");
    for link in [&bridge, &veth, &peer] {
        assert!(!link_exists(link), "stale {link} kept");
    }
    let kept = link_exists(&foreign);
    run(&["link", "del", &foreign]);
    assert!(kept, "{foreign} is not the harness's but was deleted");
    assert!(namespaces().contains(&net.host(0).ns));
    assert!(link_exists(net.bridge()));
    drop(other);
}

#[test]
fn concurrent_nets_get_distinct_names_and_subnets() {
    let nets: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..3).map(|_| s.spawn(|| netns::Net::create(2))).collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    let nets: Vec<netns::Net> = match nets.into_iter().collect() {
        Ok(n) => n,
        Err(skip) => return netns::skip(&skip),
    };
    let mut subnets: Vec<[u8; 3]> = nets
        .iter()
        .map(|n| n.host(0).addr.octets()[..3].try_into().expect("3"))
        .collect();
    subnets.sort();
    subnets.dedup();
    assert_eq!(subnets.len(), 3, "subnets collide");
    let mut names: Vec<&str> = nets.iter().map(|n| n.bridge()).collect();
    names.extend(nets.iter().flat_map(|n| {
        n.hosts()
            .iter()
            .flat_map(|h| [h.ns.as_str(), h.veth.as_str()])
    }));
    let count = names.len();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), count, "names collide");
}

#[test]
fn shaping_uses_tbf_without_netem_and_refuses_delay() {
    let Some(net) = netns::require(2) else { return };
    let rate = Shaping {
        delay: None,
        rate_mbit: Some(10),
    };
    net.shape(0, rate).expect("rate shaping");
    let (inside, outside) = net.qdiscs(0);
    let kind = if netns::netem_available() {
        "netem"
    } else {
        "tbf"
    };
    for q in [&inside, &outside] {
        assert!(q.contains(kind) && q.contains("10Mbit"), "{q}");
    }
    // Shaped hosts still talk.
    let (_d, join) = net.driver(1, &[]);
    assert!(status_from(&net, 0, &join).0);

    let delay = Shaping {
        delay: Some(Duration::from_millis(20)),
        rate_mbit: None,
    };
    match net.shape(0, delay) {
        Ok(()) => {
            assert!(netns::netem_available());
            assert!(
                net.qdiscs(0).0.contains("delay 20ms"),
                "{:?}",
                net.qdiscs(0)
            );
        }
        Err(skip) => {
            assert!(!netns::netem_available());
            assert!(
                skip.0.contains("netem") && skip.0.contains("unavailable"),
                "{skip}"
            );
            // Refused without touching the rate shaping already there.
            assert!(net.qdiscs(0).0.contains("tbf"));
        }
    }

    net.shape(0, Shaping::default()).expect("unshape");
    let (inside, outside) = net.qdiscs(0);
    assert!(
        !inside.contains("tbf") && !outside.contains("tbf"),
        "{inside} {outside}"
    );
}
