//! Test "hosts" as Linux network namespaces joined by a bridge.
//!
//! A [`Net`] makes one bridge and one namespace per host. Each host gets a
//! veth pair (`ktv…` on the bridge, `eth0` inside), an address
//! `10.X.Y.(i+1)/24`, MTU 1500 like Ethernet, `lo` up and its own temporary
//! working directory. Programs run there through `ip netns exec`; with
//! [`Options::hide`] they also get a private mount namespace with an empty
//! tmpfs over each hidden directory ("no shared filesystem"). There is no
//! default route and no NAT: traffic goes only to loopback or to the hosts.
//!
//! Include with `#[path = "cluster_support/netns.rs"] mod netns;` and start
//! a test with `let Some(net) = netns::require(3) else { return };`, which
//! prints `skipped: <reason>` where namespaces cannot be made (not root).
//!
//! Dropping a `Net`, also while unwinding from a panic, kills what it
//! started and anything left in its namespaces, then deletes its veths,
//! bridge, namespaces and directories. [`Net::create`] also removes those
//! left by earlier test processes that died.
//!
//! Gotcha: with `br_netfilter` loaded (`bridge-nf-call-iptables = 1`),
//! bridged traffic passes the root namespace's iptables FORWARD chain; a
//! DROP policy there (as Docker sets) cuts the hosts off from each other.
#![allow(dead_code)]

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io::{BufRead, BufReader, Read};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

/// Prefix of every namespace the harness makes: `kiln-t-<pid>-<n>-<host>`.
pub(crate) const NS_PREFIX: &str = "kiln-t-";
/// Prefix of bridges: `ktb<pid base 36>-<n base 36>`.
const BRIDGE_PREFIX: &str = "ktb";
/// Prefix of the bridge-side veth ends: `ktv<pid base 36>-<n>-<host>`.
const VETH_PREFIX: &str = "ktv";
/// Name of a host's interface inside its namespace.
pub(crate) const IFNAME: &str = "eth0";
/// MTU of every veth and bridge, as on Ethernet.
pub(crate) const MTU: u32 = 1500;
/// Bound on every `ip`/`tc`/`kill` command the harness runs.
const CMD_TIMEOUT: Duration = Duration::from_secs(20);
/// Run by `sh` under `unshare -m`: `$1` is the number of directories to
/// cover with a tmpfs, then come those, then the program and its arguments.
/// Paths arrive as arguments, never as shell text.
const HIDE_SCRIPT: &str = r#"n=$1; shift
while [ "$n" -gt 0 ]; do
  mount -t tmpfs -o size=1m,mode=0755 kiln-hidden "$1" || exit 126
  n=$((n - 1)); shift
done
exec "$@""#;

/// Numbers the `Net`s of this process, so names and subnets never repeat.
static COUNTER: AtomicU32 = AtomicU32::new(0);
/// Serialises stale cleanup and subnet choice between threads.
static CREATE_LOCK: Mutex<()> = Mutex::new(());

/// Why a test cannot run here (not root, no `ip`, no netem, …).
#[derive(Debug, Clone)]
pub(crate) struct Skip(pub(crate) String);

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Print `skipped: <reason>` to stderr (the caller then returns and passes).
pub(crate) fn skip(reason: &Skip) {
    eprintln!("skipped: {reason}");
}

/// [`Net::create`], or `None` after printing why the test is skipped.
pub(crate) fn require(hosts: usize) -> Option<Net> {
    Net::create(hosts).map_err(|s| skip(&s)).ok()
}

/// Whether this kernel has the `netem` qdisc (probed once, in a throwaway
/// network namespace made by `unshare -n`).
pub(crate) fn netem_available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        let probe = "-n tc qdisc add dev lo root netem delay 1ms";
        run(Command::new("unshare").args(probe.split(' '))).is_ok()
    })
}

/// Namespace name of host `host` of the `n`th `Net` of process `pid`.
pub(crate) fn ns_name(pid: u32, n: u32, host: usize) -> String {
    format!("{NS_PREFIX}{pid}-{n}-{host}")
}

/// Bridge name of the `n`th `Net` of process `pid` (at most 15 bytes).
pub(crate) fn bridge_name(pid: u32, n: u32) -> String {
    format!("{BRIDGE_PREFIX}{}-{}", base36(pid), base36(n))
}

/// Bridge-side veth name of host `host` of that `Net` (at most 15 bytes).
pub(crate) fn veth_name(pid: u32, n: u32, host: usize) -> String {
    let (p, n, h) = (base36(pid), base36(n), base36(host as u32));
    format!("{VETH_PREFIX}{p}-{n}-{h}")
}

/// `x` in lower-case base 36 (pids up to 2^22 take 5 digits).
fn base36(x: u32) -> String {
    let digit = char::from_digit(x % 36, 36).unwrap_or('?').to_string();
    match x / 36 {
        0 => digit,
        high => base36(high) + &digit,
    }
}

/// One host: a network namespace with its address and working directory.
#[derive(Debug)]
pub(crate) struct Host {
    /// Namespace name (`kiln-t-<pid>-<n>-<i>`).
    pub(crate) ns: String,
    /// The host's IPv4 address on `eth0`.
    pub(crate) addr: Ipv4Addr,
    /// The host's own working directory (`$TMPDIR/<ns>-<random>`), the
    /// cwd of what runs there.
    pub(crate) dir: PathBuf,
    /// Bridge-side end of the host's veth pair, in the root namespace.
    pub(crate) veth: String,
    /// Keeps `dir`; removes it on drop.
    _tmp: tempfile::TempDir,
}

/// Traffic shaping of a host's link, applied on both ends (so `delay` is
/// one-way and a round trip gains twice it). All `None` removes shaping.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Shaping {
    /// One-way delay; needs the `netem` qdisc.
    pub(crate) delay: Option<Duration>,
    /// Rate limit in Mbit/s each way (netem if available, else tbf).
    pub(crate) rate_mbit: Option<u32>,
}

/// A program to run in a host: what, with which arguments and environment,
/// and which directories to hide from it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Options {
    /// Program path, or a name looked up in `PATH`.
    pub(crate) program: OsString,
    /// Its arguments.
    pub(crate) args: Vec<OsString>,
    /// Absolute directories covered by an empty tmpfs in the program's own
    /// mount namespace (each must exist). The cwd (the host's directory)
    /// stays usable through relative paths even if one of these holds it;
    /// the program itself must stay visible (so hide `tests/data`, not the
    /// repository whose `target/` holds `kiln`).
    pub(crate) hide: Vec<PathBuf>,
    /// Extra environment; `RUST_LOG` is passed through (default `warn`).
    pub(crate) env: Vec<(OsString, OsString)>,
}

impl Options {
    /// Run `program` with no arguments.
    pub(crate) fn new(program: impl AsRef<OsStr>) -> Self {
        let program = program.as_ref().to_owned();
        Options {
            program,
            ..Options::default()
        }
    }

    /// Run the `kiln` binary under test.
    pub(crate) fn kiln() -> Self {
        Options::new(env!("CARGO_BIN_EXE_kiln"))
    }

    /// Add one argument.
    pub(crate) fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// Add arguments.
    pub(crate) fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(mut self, args: I) -> Self {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Hide directory `dir` (absolute, existing) from the program.
    pub(crate) fn hide(mut self, dir: impl Into<PathBuf>) -> Self {
        self.hide.push(dir.into());
        self
    }

    /// Set an environment variable.
    pub(crate) fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }
}

/// A bridge with hosts on it; everything is removed on drop.
pub(crate) struct Net {
    /// Bridge name, once made.
    bridge: Option<String>,
    /// The hosts made so far.
    hosts: Vec<Host>,
    /// Every process spawned with [`Net::spawn`], killed on drop.
    procs: Mutex<Vec<Arc<Mutex<Child>>>>,
}

impl Net {
    /// Make a bridge and `hosts` namespaces on it (at most 253), or say
    /// why this machine cannot.
    pub(crate) fn create(hosts: usize) -> Result<Net, Skip> {
        assert!((1..=253).contains(&hosts), "1..=253 hosts in a /24");
        let euid = effective_uid();
        if euid != Some(0) {
            return Err(Skip(format!(
                "network namespaces need root (euid {euid:?})"
            )));
        }
        run(Command::new("ip").arg("-V")).map_err(|e| Skip(format!("no usable `ip`: {e}")))?;
        let (pid, n) = (std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
        let (x, y) = {
            let _lock = lock(&CREATE_LOCK);
            remove_stale(pid, n);
            pick_subnet(pid, n)?
        };
        let procs = Mutex::new(Vec::new());
        let mut net = Net {
            bridge: None,
            hosts: Vec::new(),
            procs,
        };
        let bridge = bridge_name(pid, n);
        net.bridge = Some(bridge.clone());
        setup(ip(&format!(
            "link add {bridge} mtu {MTU} type bridge stp_state 0"
        )))?;
        setup(ip(&format!("link set {bridge} up")))?;
        for i in 0..hosts {
            let (ns, veth) = (ns_name(pid, n, i), veth_name(pid, n, i));
            let tmp = tempfile::Builder::new().prefix(&format!("{ns}-")).tempdir();
            let tmp = tmp.map_err(|e| Skip(format!("no temporary directory: {e}")))?;
            let (addr, dir) = (Ipv4Addr::new(10, x, y, i as u8 + 1), tmp.path().to_owned());
            // Pushed first, so that a failure below still removes what was made.
            net.hosts.push(Host {
                ns: ns.clone(),
                addr,
                dir,
                veth: veth.clone(),
                _tmp: tmp,
            });
            for step in [
                format!("netns add {ns}"),
                format!(
                    "link add {veth} mtu {MTU} type veth peer name {IFNAME} mtu {MTU} netns {ns}"
                ),
                format!("link set {veth} master {bridge} up"),
                format!("-n {ns} link set lo up"),
                format!("-n {ns} addr add {addr}/24 dev {IFNAME}"),
                format!("-n {ns} link set {IFNAME} up"),
            ] {
                setup(ip(&step))?;
            }
        }
        (0..hosts).for_each(|i| net.wait_link_ready(i));
        Ok(net)
    }

    /// Host `i`.
    pub(crate) fn host(&self, i: usize) -> &Host {
        &self.hosts[i]
    }

    /// All hosts.
    pub(crate) fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// The bridge's name.
    pub(crate) fn bridge(&self) -> &str {
        self.bridge.as_deref().unwrap_or_default()
    }

    /// The command that runs `o` in host `i`: `ip netns exec`, then for
    /// hidden directories `unshare -m` and `sh`; each `exec`s the next, so
    /// the child's pid is the program's own.
    fn command(&self, i: usize, o: &Options) -> Command {
        let host = self.host(i);
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec"]).arg(&host.ns);
        if !o.hide.is_empty() {
            let relative = o.hide.iter().find(|d| !d.is_absolute());
            assert!(relative.is_none(), "hidden {relative:?} must be absolute");
            cmd.args("unshare -m --propagation private sh -c".split(' '));
            cmd.args([HIDE_SCRIPT, "kiln-hide", &o.hide.len().to_string()]);
            cmd.args(&o.hide);
        }
        cmd.arg(&o.program).args(&o.args).current_dir(&host.dir);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "warn");
        }
        cmd.envs(o.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// Start `o` in host `i` with stdout read line by line, stdin a pipe
    /// and stderr inherited; killed when the [`Proc`] or this `Net` drops.
    pub(crate) fn spawn(&self, i: usize, o: &Options) -> Proc {
        let mut cmd = self.command(i, o);
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
        cmd.stderr(Stdio::inherit());
        let spawned = cmd.spawn();
        let mut child = spawned.unwrap_or_else(|e| panic!("spawning {o:?} on host {i}: {e}"));
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let pid = child.id();
        let child = Arc::new(Mutex::new(child));
        lock(&self.procs).push(Arc::clone(&child));
        Proc { child, pid, lines }
    }

    /// Run `o` in host `i` to completion and return its output; panics if
    /// it cannot start or runs past `timeout` (it is then killed).
    pub(crate) fn output(&self, i: usize, o: &Options, timeout: Duration) -> Output {
        let out = run_bounded(&mut self.command(i, o), timeout);
        out.unwrap_or_else(|e| panic!("running {o:?} on host {i}: {e}"))
    }

    /// Start the `kiln` binary with `args` in host `i`.
    pub(crate) fn kiln(&self, i: usize, args: &[&str]) -> Proc {
        self.spawn(i, &Options::kiln().args(args))
    }

    /// Start `kiln driver --listen <host i's addr>:0 <args>`; returns it
    /// and the `TOKEN@ADDR:PORT` of its `JOIN` line.
    pub(crate) fn driver(&self, i: usize, args: &[&str]) -> (Proc, String) {
        let listen = format!("{}:0", self.host(i).addr);
        let mut p = self.kiln(i, &[&["driver", "--listen", &listen], args].concat());
        let line = p.wait_for("JOIN ", Duration::from_secs(30));
        (p, line["JOIN ".len()..].trim().to_owned())
    }

    /// Start `kiln executor --join JOIN --name NAME --cores 1` in host `i`.
    pub(crate) fn executor(&self, i: usize, join: &str, name: &str) -> Proc {
        let args = ["executor", "--join", join, "--name", name, "--cores", "1"];
        self.kiln(i, &args)
    }

    /// `ip -n <ns> args…` in host `i`'s namespace; its stdout.
    pub(crate) fn ip(&self, i: usize, args: &[&str]) -> String {
        let ns = ["-n", self.host(i).ns.as_str()];
        must(run(Command::new("ip").args(ns).args(args)))
    }

    /// `tc qdisc show` of host `i`'s link: (inside on `eth0`, bridge side).
    pub(crate) fn qdiscs(&self, i: usize) -> (String, String) {
        let h = self.host(i);
        let inside = must(tc(&format!("-n {} qdisc show dev {IFNAME}", h.ns)));
        (inside, must(tc(&format!("qdisc show dev {}", h.veth))))
    }

    /// Cut host `i` off the bridge (its veth down, as if unplugged).
    pub(crate) fn link_down(&self, i: usize) {
        must(ip(&format!("link set {} down", self.host(i).veth)));
    }

    /// A direct link between hosts `a` and `b` (a veth pair with one end in
    /// each namespace, `p2p<b>` in `a` and `p2p<a>` in `b`, on subnet
    /// `192.168.<k>.0/30` private to the two), besides the bridge; returns
    /// `a`'s and `b`'s addresses on it. Removed with the namespaces.
    pub(crate) fn direct_link(&self, a: usize, b: usize) -> (Ipv4Addr, Ipv4Addr) {
        let k = (a * 16 + b) as u8;
        let (ha, hb) = (self.host(a), self.host(b));
        let (ia, ib) = (format!("p2p{b}"), format!("p2p{a}"));
        let (aa, ab) = (Ipv4Addr::new(192, 168, k, 1), Ipv4Addr::new(192, 168, k, 2));
        for step in [
            format!(
                "-n {} link add {ia} mtu {MTU} type veth peer name {ib} mtu {MTU} netns {}",
                ha.ns, hb.ns
            ),
            format!("-n {} addr add {aa}/30 dev {ia}", ha.ns),
            format!("-n {} addr add {ab}/30 dev {ib}", hb.ns),
            format!("-n {} link set {ia} up", ha.ns),
            format!("-n {} link set {ib} up", hb.ns),
        ] {
            must(ip(&step));
        }
        (aa, ab)
    }

    /// Plug host `i` back in; returns once the link forwards again.
    pub(crate) fn link_up(&self, i: usize) {
        must(ip(&format!("link set {} up", self.host(i).veth)));
        self.wait_link_ready(i);
    }

    /// Wait (at most 10 s) until host `i`'s link is up and its bridge port
    /// forwards (`brport/state` 3).
    fn wait_link_ready(&self, i: usize) {
        let sys = Path::new("/sys/class/net").join(&self.host(i).veth);
        let read = |f: &str| std::fs::read_to_string(sys.join(f)).unwrap_or_default();
        let deadline = Instant::now() + Duration::from_secs(10);
        while read("operstate").trim() != "up" || read("brport/state").trim() != "3" {
            assert!(Instant::now() < deadline, "host {i}: link still down");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Shape host `i`'s link both ways (see [`Shaping`]) with netem where
    /// the kernel has it; otherwise the rate goes through tbf and a delay
    /// is refused, before any change, with a `Skip` saying netem is
    /// unavailable.
    pub(crate) fn shape(&self, i: usize, s: Shaping) -> Result<(), Skip> {
        let h = self.host(i);
        let ends = [format!("-n {} qdisc", h.ns), "qdisc".to_owned()];
        let ends = ends.iter().zip([IFNAME, &h.veth]);
        let qdisc = match (netem_available(), s.delay, s.rate_mbit) {
            (_, None, None) => {
                // Nothing to remove is fine: ignore "no qdisc" errors.
                ends.for_each(|(end, dev)| drop(tc(&format!("{end} del dev {dev} root"))));
                return Ok(());
            }
            (true, delay, rate) => {
                let delay = delay.map(|d| format!(" delay {}us", d.as_micros()));
                let rate = rate.map(|r| format!(" rate {r}mbit"));
                format!(
                    "netem{}{} limit 10000",
                    delay.unwrap_or_default(),
                    rate.unwrap_or_default()
                )
            }
            (false, Some(_), _) => {
                return Err(Skip(
                    "the netem qdisc is unavailable in this kernel \
                     (CONFIG_NET_SCH_NETEM); only rate shaping (tbf) works"
                        .into(),
                ))
            }
            (false, None, Some(r)) => {
                // A burst of 10 ms at the rate, and at least ten full frames.
                let burst = (u64::from(r) * 1_000_000 / 8 / 100).max(10 * 1514);
                format!("tbf rate {r}mbit burst {burst} latency 100ms")
            }
        };
        ends.for_each(|(end, dev)| {
            drop(must(tc(&format!("{end} replace dev {dev} root {qdisc}"))))
        });
        Ok(())
    }
}

impl Drop for Net {
    /// Kill every process started here and every process left in the
    /// namespaces, then delete veths, bridge and namespaces. The veths go
    /// first: deleting a namespace frees its interfaces only later, in the
    /// background.
    fn drop(&mut self) {
        for child in lock(&self.procs).drain(..) {
            kill_reap(&mut lock(&child));
        }
        for h in &self.hosts {
            kill_ns_pids(&h.ns);
            let _ = ip(&format!("link del {}", h.veth));
        }
        if let Some(bridge) = &self.bridge {
            let _ = ip(&format!("link del {bridge}"));
        }
        for h in &self.hosts {
            let _ = ip(&format!("netns del {}", h.ns));
        }
    }
}

/// A program running in a host; killed (SIGKILL) and reaped on drop.
pub(crate) struct Proc {
    /// The child, shared with the `Net` that kills it on its own drop.
    child: Arc<Mutex<Child>>,
    /// The program's pid (that of `ip netns exec`, which `exec`s it).
    pid: u32,
    /// Its stdout lines.
    lines: mpsc::Receiver<String>,
}

impl Proc {
    /// The pid of the program itself.
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// Next stdout line, `None` once stdout is closed; panics after `timeout`.
    pub(crate) fn next_line(&mut self, timeout: Duration) -> Option<String> {
        match self.lines.recv_timeout(timeout) {
            Ok(l) => Some(l),
            Err(mpsc::RecvTimeoutError::Disconnected) => None,
            Err(mpsc::RecvTimeoutError::Timeout) => panic!("no output line within {timeout:?}"),
        }
    }

    /// Read lines until one starts with `prefix`; returns it.
    pub(crate) fn wait_for(&mut self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_line(left.max(Duration::from_millis(1))) {
                Some(l) if l.starts_with(prefix) => return l,
                Some(_) => {}
                None => panic!("process exited before printing {prefix:?}"),
            }
        }
    }

    /// All remaining stdout lines until the program closes stdout.
    pub(crate) fn rest(&mut self, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "still running after {timeout:?}; output: {out:?}"
            );
            match self.next_line(left) {
                Some(l) => out.push(l),
                None => return out,
            }
        }
    }

    /// Wait for exit within `timeout`; `None` if it is still running.
    pub(crate) fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        wait_until(&mut lock(&self.child), Instant::now() + timeout)
    }

    /// SIGKILL the program now and reap it.
    pub(crate) fn kill9(&mut self) {
        kill_reap(&mut lock(&self.child));
    }
}

impl Drop for Proc {
    /// SIGKILL the program (if still running) and reap it.
    fn drop(&mut self) {
        kill_reap(&mut lock(&self.child));
    }
}

/// Lock `m`, ignoring poisoning (a panicking test must still clean up).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// SIGKILL `child` and reap it within 10 s. Once reaped, `Child::kill`
/// sends nothing, so a reused pid is never hit.
fn kill_reap(child: &mut Child) {
    let _ = child.kill();
    let _ = wait_until(child, Instant::now() + Duration::from_secs(10));
}

/// Poll `child` until it exits (its status) or `deadline` passes (`None`).
fn wait_until(child: &mut Child, deadline: Instant) -> Option<ExitStatus> {
    let mut pause = Duration::from_millis(1);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(pause),
            _ => return None,
        }
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// Read a pipe to its end on a thread; the bytes arrive on the channel.
fn drain(pipe: Option<impl Read + Send + 'static>) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut buf);
        }
        let _ = tx.send(buf);
    });
    rx
}

/// Run `cmd` with stdin closed and output captured; kill it after `timeout`.
fn run_bounded(cmd: &mut Command, timeout: Duration) -> std::io::Result<Output> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    let (out, err) = (drain(child.stdout.take()), drain(child.stderr.take()));
    let deadline = Instant::now() + timeout;
    let Some(status) = wait_until(&mut child, deadline) else {
        kill_reap(&mut child);
        let msg = format!("still running after {timeout:?}");
        return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, msg));
    };
    // A grandchild may hold the pipes open: wait for them only so long.
    let left = || {
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(100))
    };
    let (stdout, stderr) = (out.recv_timeout(left()), err.recv_timeout(left()));
    let (stdout, stderr) = (stdout.unwrap_or_default(), stderr.unwrap_or_default());
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

/// Run a short command (bounded by `CMD_TIMEOUT`); its stdout, or an error
/// naming the command, its status and its stderr.
fn run(cmd: &mut Command) -> Result<String, String> {
    let desc = format!("{cmd:?}");
    match run_bounded(cmd, CMD_TIMEOUT) {
        Ok(o) if o.status.success() => Ok(String::from_utf8_lossy(&o.stdout).into_owned()),
        Ok(o) => Err(format!(
            "{desc}: {}: {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Err(format!("{desc}: {e}")),
    }
}

/// `ip` with `args` split at spaces (only the harness's own names in them).
fn ip(args: &str) -> Result<String, String> {
    run(Command::new("ip").args(args.split(' ')))
}

/// `tc` with `args` split at spaces (`-n NS` first for another namespace).
fn tc(args: &str) -> Result<String, String> {
    run(Command::new("tc").args(args.split(' ')))
}

/// The output of a command that must work, or a panic with its error.
fn must(r: Result<String, String>) -> String {
    r.unwrap_or_else(|e| panic!("{e}"))
}

/// A setup step: permission or kernel-support failures become a `Skip`,
/// anything else is a harness bug and panics.
fn setup(r: Result<String, String>) -> Result<String, Skip> {
    r.map_err(|e| {
        let env = [
            "not permitted",
            "Permission denied",
            "not supported",
            "Unknown device",
        ];
        if env.iter().any(|m| e.contains(m)) {
            Skip(format!("cannot make network namespaces here: {e}"))
        } else {
            panic!("{e}")
        }
    })
}

/// The effective uid, from `/proc/self/status`.
fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// SIGKILL every process still in namespace `ns` (e.g. a program's children).
fn kill_ns_pids(ns: &str) {
    let pids = ip(&format!("netns pids {ns}")).unwrap_or_default();
    let pids: Vec<&str> = pids.split_whitespace().collect();
    if !pids.is_empty() {
        let _ = run(Command::new("kill").arg("-KILL").args(&pids));
    }
}

/// The harness's namespaces that exist now.
fn our_namespaces() -> Vec<String> {
    let list = ip("netns list").unwrap_or_default();
    let names = list.lines().filter_map(|l| l.split_whitespace().next());
    names
        .filter(|ns| ns.starts_with(NS_PREFIX))
        .map(str::to_owned)
        .collect()
}

/// The (pid, counter) in `name` if it is a namespace, bridge or veth name
/// this harness makes (all its parts present and numbers), else `None`.
fn owner(name: &str) -> Option<(u32, u32)> {
    let (rest, radix, parts) = if let Some(rest) = name.strip_prefix(NS_PREFIX) {
        (rest, 10, 3)
    } else if let Some(rest) = name.strip_prefix(BRIDGE_PREFIX) {
        (rest, 36, 2)
    } else {
        (name.strip_prefix(VETH_PREFIX)?, 36, 3)
    };
    let nums = rest.split('-').map(|p| u32::from_str_radix(p, radix).ok());
    let nums: Vec<u32> = nums.collect::<Option<_>>()?;
    (nums.len() == parts).then(|| (nums[0], nums[1]))
}

/// Remove namespaces, links and directories of this harness whose process
/// is gone, and those named for `Net` number `n` of this process `pid`:
/// not made yet, so left by a dead process that had the same pid.
fn remove_stale(pid: u32, n: u32) {
    let dead = |name: &str| match owner(name) {
        Some(owner) if owner == (pid, n) => true,
        Some((p, _)) => !Path::new(&format!("/proc/{p}")).exists(),
        None => false,
    };
    for ns in our_namespaces().iter().filter(|ns| dead(ns)) {
        kill_ns_pids(ns);
        let _ = ip(&format!("netns del {ns}"));
    }
    for line in ip("-o link show").unwrap_or_default().lines() {
        // "16: ktv1a2b-0-1@if2: <BROADCAST,…"
        let name = line.split(": ").nth(1).and_then(|n| n.split('@').next());
        if let Some(name) = name.filter(|n| dead(n)) {
            let _ = ip(&format!("link del {name}"));
        }
    }
    // Working directories: `<namespace name>-<random letters>`.
    for entry in std::fs::read_dir(std::env::temp_dir())
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.rsplit_once('-').is_some_and(|(ns, _)| dead(ns)) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// An IPv4 network from `a.b.c.d/len` or `a.b.c.d` (a /32).
fn parse_net(token: &str) -> Option<(Ipv4Addr, u32)> {
    let (addr, len) = token.split_once('/').unwrap_or((token, "32"));
    Some((addr.parse().ok()?, len.parse().ok().filter(|l| *l <= 32)?))
}

/// Whether two networks share an address.
fn overlaps(a: (Ipv4Addr, u32), b: (Ipv4Addr, u32)) -> bool {
    let mask = u32::MAX.checked_shl(32 - a.1.min(b.1)).unwrap_or(0);
    u32::from(a.0) & mask == u32::from(b.0) & mask
}

/// Choose `X.Y` of a free `10.X.Y.0/24`: derived from the pid and counter
/// (distinct for every `Net` of one process), skipping any that overlaps an
/// address or route of the root namespace or an address in another
/// harness namespace. (Nets on different bridges could even share one.)
fn pick_subnet(pid: u32, n: u32) -> Result<(u8, u8), Skip> {
    let mut used = Vec::new();
    let mut scan = |text: String| used.extend(text.split_whitespace().filter_map(parse_net));
    scan(ip("-o -4 addr show").unwrap_or_default());
    scan(ip("-4 route show").unwrap_or_default());
    for ns in our_namespaces() {
        scan(ip(&format!("-n {ns} -o -4 addr show")).unwrap_or_default());
    }
    let start = pid.wrapping_mul(40_503).wrapping_add(n);
    (0..4096u32)
        .map(|k| start.wrapping_add(k).to_be_bytes())
        .map(|b| (b[2], b[3]))
        .find(|&(x, y)| {
            !used
                .iter()
                .any(|&u| overlaps(u, (Ipv4Addr::new(10, x, y, 0), 24)))
        })
        .ok_or_else(|| Skip("no free 10.X.Y.0/24 subnet".into()))
}
