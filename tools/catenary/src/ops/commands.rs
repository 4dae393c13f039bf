//! The operator commands: each builds its API request with `catenary_api::client`, sends it,
//! and prints a table (or the JSON answer with `--json`).

use super::transport::{CallError, Transport};
use catenary_api::client::{self, ClientError};
use catenary_api::types::*;
use std::io::{IsTerminal, Read, Seek, SeekFrom};
use std::path::Path;
use std::time::Duration;

/// Why a command failed, and its exit status.
#[derive(Debug)]
pub enum CliError {
    Call(CallError),
    Other(String),
}

impl From<CallError> for CliError {
    fn from(e: CallError) -> CliError {
        CliError::Call(e)
    }
}

impl CliError {
    /// 3: the node is unreachable; 4: permission denied; 1: anything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Call(CallError::Unreachable(_)) => 3,
            CliError::Call(CallError::Api(ClientError::Api { status: 403, .. })) => 4,
            _ => 1,
        }
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CliError::Call(e) => write!(f, "{e}"),
            CliError::Other(s) => f.write_str(s),
        }
    }
}

pub struct Ctx {
    pub t: Transport,
    pub json: bool,
}

type R = Result<(), CliError>;

fn print_json<T: serde::Serialize>(v: &T) -> R {
    println!("{}", serde_json::to_string_pretty(v).map_err(|e| CliError::Other(e.to_string()))?);
    Ok(())
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or("-".into(), |v| v.to_string())
}

fn exit_text(e: &Option<Exit>) -> String {
    e.as_ref().map_or("-".into(), |e| e.text.clone())
}

pub fn nodes(c: &Ctx) -> R {
    let l: NodeList = c.t.call(&client::list_nodes())?;
    if c.json {
        return print_json(&l);
    }
    println!("{:<12} {:<12} {:<8} {:>16} {:<40} {:>4} {:>18} {:>14} {:>9} {:>17}  LABELS", "NAME", "STATE", "MEMBER", "INCARNATION", "ADDRESS", "CPUS", "MEM FREE/TOTAL", "COMMITTED", "WORKLOADS", "STORE FREE/IMGS");
    for n in &l.nodes {
        let mem = match (n.memory_free_mib, n.memory_total_mib) {
            (Some(f), Some(t)) => format!("{f}/{t} MiB"),
            (None, Some(t)) => format!("-/{t} MiB"),
            _ => "-".into(),
        };
        let committed = n.memory_committed_mib.map_or("-".into(), |c| format!("{c} MiB"));
        let labels = match &n.labels {
            Some(l) if !l.is_empty() => l.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","),
            _ => "-".into(),
        };
        let store = match (n.store_free_mib, n.images) {
            (Some(f), Some(i)) => format!("{f} MiB/{i}"),
            _ => "-".into(),
        };
        println!("{:<12} {:<12} {:<8} {:>16} {:<40} {:>4} {:>18} {:>14} {:>9} {:>17}  {}", n.name, n.state, opt(n.membership.as_deref()), opt(n.incarnation), n.address, opt(n.cpus), mem, committed, opt(n.workloads), store, labels);
    }
    let pending: Vec<&catenary_api::types::Node> = l.nodes.iter().filter(|n| NodeState::Pending.is(&n.state)).collect();
    if !pending.is_empty() {
        println!("pending (admit with `catenary node add KEY`):");
        for n in pending {
            println!("  {} key {} MAC {}", n.name, n.public_key, opt(n.mac.as_deref()));
        }
    }
    Ok(())
}

/// `catenary node add KEY` (admin).
pub fn node_add(c: &Ctx, key: &str) -> R {
    if catenary_api::auth::hex32(key).is_none() {
        return Err(CliError::Other("KEY: not 64 hex digits".into()));
    }
    let a: NodeAdd = c.t.call(&client::add_node(key))?;
    println!("{}", a.public_key);
    Ok(())
}

/// `k=v` sets, `k-` removes (as `kubectl label`); checked again by the API.
pub fn parse_label_changes(changes: &[String]) -> Result<NodeLabels, CliError> {
    let mut l = NodeLabels::default();
    for c in changes {
        if let Some((k, v)) = c.split_once('=') {
            if l.set.insert(k.to_string(), v.to_string()).is_some() {
                return Err(CliError::Other(format!("label {k} given twice")));
            }
        } else if let Some(k) = c.strip_suffix('-') {
            l.remove.push(k.to_string());
        } else {
            return Err(CliError::Other(format!("{c:?}: not KEY=VALUE (set) or KEY- (remove)")));
        }
    }
    Ok(l)
}

/// `catenary node label NODE k=v k-` (admin).
pub fn node_label(c: &Ctx, node: &str, changes: &[String]) -> R {
    let l = parse_label_changes(changes)?;
    let done: NodeLabels = c.t.call(&client::label_node(node, &l))?;
    if c.json {
        return print_json(&done);
    }
    let mut parts: Vec<String> = done.set.iter().map(|(k, v)| format!("{k}={v}")).collect();
    parts.extend(done.remove.iter().map(|k| format!("{k}-")));
    println!("{node} labelled: {}", parts.join(" "));
    Ok(())
}

/// `catenary node remove NODE` (admin).
pub fn node_remove(c: &Ctx, node: &str) -> R {
    let a: NodeAdd = c.t.call(&client::remove_node(node))?;
    if c.json {
        return print_json(&a);
    }
    println!("{} removed", a.public_key);
    Ok(())
}

pub fn images(c: &Ctx) -> R {
    let l: ImageList = c.t.call(&client::list_images())?;
    if c.json {
        return print_json(&l);
    }
    println!("{:<71} {:>12}  NODE", "DIGEST", "ROOTFS");
    for i in &l.images {
        println!("{:<71} {:>12}  {}", i.digest, i.rootfs_size, i.node.as_deref().unwrap_or("-"));
    }
    Ok(())
}

pub fn image_rm(c: &Ctx, digest: &str) -> R {
    let i: Image = c.t.call(&client::remove_image(digest))?;
    match &i.node {
        Some(n) => println!("{} (removed from {n})", i.digest),
        None => println!("{}", i.digest),
    }
    Ok(())
}

/// `catenary image push DIR`: verify the image here, then send what the node lacks. Resumes
/// a push that was interrupted (the node keeps the chunks it verified); a chunk the node finds
/// corrupted is sent again (up to 3 times); an image the node has is not sent at all.
pub fn image_push(c: &Ctx, dir: &Path) -> R {
    let (digest, m) = crate::image::verify(dir, None).map_err(|e| CliError::Other(format!("{}: {e}", dir.display())))?;
    let manifest = std::fs::read_to_string(dir.join(crate::image::IMAGE_FILE)).map_err(|e| CliError::Other(e.to_string()))?;
    let create = UploadCreate { image: digest.clone(), manifest };
    let u: Upload = c.t.call(&client::create_upload(&create))?;
    if u.present {
        eprintln!("the node already has {digest}");
        println!("{digest}");
        return Ok(());
    }
    let config = std::fs::read(dir.join(&m.config.file)).map_err(|e| CliError::Other(e.to_string()))?;
    let mut rootfs = std::fs::File::open(dir.join(&m.rootfs.file)).map_err(|e| CliError::Other(e.to_string()))?;
    if u.size != config.len() as u64 + m.rootfs.size || u.chunk_size == 0 {
        return Err(CliError::Other(format!("the node expects {} bytes in chunks of {}: not this image", u.size, u.chunk_size)));
    }
    let already = u.chunks as usize - u.missing.len();
    if already > 0 {
        eprintln!("resuming: {already} of {} chunks already on the node", u.chunks);
    }
    let hooks = PushHooks::from_env();
    let bar = indicatif::ProgressBar::new(u.size);
    if !std::io::stderr().is_terminal() {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar.set_style(indicatif::ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec}").unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()));
    bar.set_position(already as u64 * u.chunk_size as u64);
    let (mut sent, mut sent_bytes) = (0usize, 0u64);
    for i in &u.missing {
        if hooks.hold_after == Some(sent) {
            hold(sent);
        }
        let bytes = stream_chunk(&config, &mut rootfs, u.size, u.chunk_size as u64, *i).map_err(|e| CliError::Other(e.to_string()))?;
        let mut tries = 0;
        loop {
            let mut req = client::put_chunk(u.id, *i, &bytes);
            if tries == 0 && hooks.corrupt == Some(*i) {
                if let Some(b) = req.body.first_mut() {
                    *b ^= 0xff; // the digest header still names the true bytes
                }
            }
            sent_bytes += req.body.len() as u64;
            match c.t.call::<Upload>(&req) {
                Ok(_) => break,
                Err(CallError::Api(ClientError::Api { code, .. })) if code == "chunk_digest_mismatch" && tries < 3 => {
                    eprintln!("chunk {i} refused by the node (chunk_digest_mismatch): sending it again");
                    tries += 1
                }
                Err(e) => return Err(e.into()),
            }
        }
        sent += 1;
        bar.inc(bytes.len() as u64);
    }
    bar.finish_and_clear();
    let img: Image = c.t.call(&client::commit_upload(u.id))?;
    eprintln!("pushed: {sent} of {} chunks sent ({sent_bytes} bytes), {already} were already on the node", u.chunks);
    println!("{}", img.digest);
    Ok(())
}

/// Test hooks of `image push` (docs/api.md "Image push"): a real interruption and a real
/// corrupted chunk on the wire, for the QEMU tests. `CATENARY_PUSH_HOLD_AFTER=K`: after K
/// chunks of this run, say so and wait to be killed. `CATENARY_PUSH_CORRUPT_CHUNK=I`: the
/// first send of chunk I has a byte flipped (its digest header names the true bytes).
struct PushHooks {
    hold_after: Option<usize>,
    corrupt: Option<u32>,
}

impl PushHooks {
    fn from_env() -> PushHooks {
        let num = |k: &str| std::env::var(k).ok().and_then(|v| v.parse().ok());
        PushHooks { hold_after: num("CATENARY_PUSH_HOLD_AFTER").map(|n: u64| n as usize), corrupt: num("CATENARY_PUSH_CORRUPT_CHUNK").map(|n: u64| n as u32) }
    }
}

fn hold(sent: usize) -> ! {
    eprintln!("push: holding after {sent} chunks (CATENARY_PUSH_HOLD_AFTER)");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Chunk `i` of the stream config.json ‖ rootfs.squashfs.
fn stream_chunk(config: &[u8], rootfs: &mut std::fs::File, size: u64, chunk: u64, i: u32) -> std::io::Result<Vec<u8>> {
    let start = i as u64 * chunk;
    let end = (start + chunk).min(size);
    let mut out = Vec::with_capacity((end - start) as usize);
    let cl = config.len() as u64;
    if start < cl {
        out.extend_from_slice(&config[start as usize..end.min(cl) as usize]);
    }
    if end > cl {
        let from = start.max(cl) - cl;
        rootfs.seek(SeekFrom::Start(from))?;
        let mut buf = vec![0u8; (end - start.max(cl)) as usize];
        rootfs.read_exact(&mut buf)?;
        out.extend_from_slice(&buf);
    }
    Ok(out)
}

pub struct RunArgs {
    pub name: Option<String>,
    pub cpus: Option<u8>,
    pub memory_mib: Option<u32>,
    pub env: Vec<String>,
    pub restart: Option<String>,
    /// A network device with its own /128 (`--net none`: false).
    pub net: bool,
    /// The cluster's desired state, on this many nodes.
    pub replicas: Option<u32>,
    /// Placement constraints (a cluster workload).
    pub constraints: Vec<String>,
    /// `--health-cmd` and its settings.
    pub health: Option<catenary_api::types::HealthCheck>,
    pub image: String,
    pub args: Vec<String>,
}

/// IMAGE is a digest, or a packed image directory (its digest is image.json's sha256).
fn image_digest(image: &str) -> Result<String, CliError> {
    if image.starts_with("sha256:") {
        return Ok(image.to_string());
    }
    let p = Path::new(image);
    if p.is_dir() {
        let bytes = std::fs::read(p.join(crate::image::IMAGE_FILE)).map_err(|e| CliError::Other(format!("{image}: {e}")))?;
        return Ok(catenary_workload::Digest::of(&bytes).to_string());
    }
    Err(CliError::Other(format!("{image}: not an image digest (sha256:…) nor a packed image directory")))
}

pub fn run(c: &Ctx, a: RunArgs) -> R {
    for e in &a.env {
        if !e.contains('=') {
            return Err(CliError::Other(format!("--env {e}: expected NAME=value")));
        }
    }
    let req = RunRequest {
        name: a.name,
        image: image_digest(&a.image)?,
        cpus: a.cpus,
        memory_mib: a.memory_mib,
        env: a.env,
        args: (!a.args.is_empty()).then_some(a.args),
        restart: a.restart,
        net: Some(a.net),
        replicas: if a.replicas.is_none() && !a.constraints.is_empty() { Some(1) } else { a.replicas },
        constraints: (!a.constraints.is_empty()).then_some(a.constraints),
        health: a.health,
    };
    if req.replicas.is_some() {
        let w: ClusterWorkload = c.t.call(&client::run_cluster(&req))?;
        if c.json {
            return print_json(&w);
        }
        // replicas and constraints change where replicas run, not what they run
        let replaced = w.changed.iter().any(|f| !matches!(f.as_str(), "replicas" | "constraints"));
        let said = match w.change.as_deref() {
            Some("updated") => format!(": updated ({}){}", w.changed.join(", "), if replaced { "; replicas on the old spec are replaced one at a time (catenary ps marks them outdated)" } else { "" }),
            Some(c) => format!(": {c}"),
            None => String::new(),
        };
        println!("{} replicas={} (cluster){said}", w.name, w.replicas);
        return Ok(());
    }
    let w: Workload = c.t.call(&client::run(&req))?;
    if c.json {
        return print_json(&w);
    }
    // placed on another node (the one that holds the image): say which
    let on = w.node.as_ref().map_or(String::new(), |n| format!(" on {n}"));
    match &w.address {
        Some(a) => println!("{} {} {}{on}", w.id, w.name, a),
        None => println!("{} {}{on}", w.id, w.name),
    }
    Ok(())
}

/// The cluster's desired state, or `None` when the node has no orchestration service (503
/// `no_cluster`): `ps` then shows only the nodes' workloads.
fn cluster_list(c: &Ctx) -> Result<Option<ClusterWorkloadList>, CallError> {
    match c.t.call::<ClusterWorkloadList>(&client::list_cluster()) {
        Ok(l) => Ok(Some(l)),
        Err(CallError::Api(ClientError::Api { status: 503, code, .. })) if code == "no_cluster" => Ok(None),
        Err(e) => Err(e),
    }
}

pub fn ps(c: &Ctx) -> R {
    let l: WorkloadList = c.t.call(&client::list_workloads())?;
    // The nodes' table does not depend on the cluster's listing: when that fails (e.g. 503
    // `cluster_unavailable` while orchd joins) ps says so on stderr, one line, and succeeds.
    let (cl, cl_err) = match cluster_list(c) {
        Ok(cl) => (cl, None),
        Err(e) => (None, Some(e.to_string().chars().map(|ch| if ch.is_control() { ' ' } else { ch }).collect::<String>())),
    };
    if let Some(e) = &cl_err {
        eprintln!("catenary: the cluster's workloads are not listed: {e}");
    }
    if c.json {
        // The nodes' list as before, and the cluster's (null without orchestration or when
        // its listing failed: `cluster_error` says why).
        return print_json(&serde_json::json!({ "workloads": l.workloads, "cluster": cl, "cluster_error": cl_err }));
    }
    println!("{:>4} {:<24} {:<9} {:<8} {:<10} {:>8} {:>8}  {:<39}  EXIT", "ID", "NAME", "STATE", "HEALTH", "NODE", "MEM MiB", "RESTARTS", "ADDRESS");
    for w in &l.workloads {
        // `-`: no health check
        let health = if w.health == "unchecked" { "-" } else { w.health.as_str() };
        println!("{:>4} {:<24} {:<9} {:<8} {:<10} {:>8} {:>8}  {:<39}  {}", w.id, w.name, w.state, health, w.node.as_deref().unwrap_or("-"), w.memory_mib, w.restarts, w.address.as_deref().unwrap_or("-"), exit_text(&w.exit));
    }
    let Some(cl) = cl else { return Ok(()) };
    println!();
    println!("{:<24} {:>8} {:<20} {:<40}  NODES", "CLUSTER WORKLOAD", "REPLICAS", "IMAGE", "CONSTRAINTS");
    for w in &cl.workloads {
        // `,outdated`: it runs the spec from before an update (replaced on its turn)
        let nodes: Vec<String> = w.assignments.iter().map(|a| format!("{}:{}{}", a.node.as_deref().unwrap_or("-"), a.state.as_deref().unwrap_or("?"), if a.outdated { ",outdated" } else { "" })).collect();
        let mut nodes = nodes.join(" ");
        if !w.placeable {
            nodes = format!("unplaceable: {} of {} nodes meet the constraints", w.eligible_nodes, w.replicas);
        }
        let image = w.image.get(..19).unwrap_or(&w.image);
        let constraints = if w.constraints.is_empty() { "-".to_string() } else { w.constraints.join(",") };
        println!("{:<24} {:>8} {:<20} {:<40}  {}", w.name, format!("{}/{}", w.running, w.replicas), image, constraints, nodes);
    }
    if cl.workloads.len() < cl.total as usize {
        println!("({} of {} cluster workloads listed)", cl.workloads.len(), cl.total);
    }
    Ok(())
}

/// Whether a node-workload request's failure leaves the cluster route to try: no node has it
/// (404), or a member did not answer (503 `node_unavailable`: a dead or removed member is
/// still in the cluster file, and a cluster workload's name is no node's workload name).
pub fn try_cluster_route(e: &CallError) -> bool {
    match e {
        CallError::Api(ClientError::Api { status: 404, .. }) => true,
        CallError::Api(ClientError::Api { status: 503, code, .. }) => code == "node_unavailable",
        _ => false,
    }
}

/// The cluster route's answer to a name, or — when that is 404 too and the node route had
/// failed otherwise (a silent member) — the node route's error, which says more.
fn cluster_or<T>(first: CallError, second: Result<T, CallError>) -> Result<T, CliError> {
    match second {
        Err(CallError::Api(ClientError::Api { status: 404, .. })) if !matches!(first, CallError::Api(ClientError::Api { status: 404, .. })) => Err(first.into()),
        r => r.map_err(CliError::from),
    }
}

/// A node's workload (id or name), else the cluster workload of that name.
pub fn inspect(c: &Ctx, id: &str) -> R {
    match c.t.call::<Workload>(&client::inspect(id)) {
        Ok(w) => print_json(&w),
        Err(e) if try_cluster_route(&e) => {
            let w: ClusterWorkloadStatus = cluster_or(e, c.t.call(&client::inspect_cluster(id)))?;
            print_json(&w)
        }
        Err(e) => Err(e.into()),
    }
}

pub fn stop(c: &Ctx, id: &str, grace_ms: Option<u32>) -> R {
    let w: Workload = c.t.call(&client::stop(id, grace_ms))?;
    println!("{} {} {}", w.id, w.name, w.state);
    Ok(())
}

/// `node drain NODE`: committed to the cluster's desired state; the replicas move off it.
pub fn drain(c: &Ctx, node: &str) -> R {
    let n: ClusterNode = c.t.call(&client::drain_node(node))?;
    if c.json {
        return print_json(&n);
    }
    println!("{} drained", n.name);
    Ok(())
}

/// `node undrain NODE`: committed; the scheduler may place replicas there again.
pub fn undrain(c: &Ctx, node: &str) -> R {
    let n: ClusterNode = c.t.call(&client::undrain_node(node))?;
    if c.json {
        return print_json(&n);
    }
    println!("{} undrained", n.name);
    Ok(())
}

/// `node leave NODE`: the node leaves the cluster gracefully (the others show it `left` at
/// once) and is drained (its replicas start elsewhere).
pub fn leave(c: &Ctx, node: &str) -> R {
    let n: ClusterNode = c.t.call(&client::leave_node(node))?;
    if c.json {
        return print_json(&n);
    }
    println!("{} left the cluster (drained)", n.name);
    Ok(())
}

/// A workload of the node (or, through it, of another node); a name no node has is taken
/// out of the cluster's desired state.
pub fn rm(c: &Ctx, id: &str) -> R {
    match c.t.call::<Removed>(&client::remove(id)) {
        Ok(r) => println!("{} {}", r.id, r.name),
        Err(e) if try_cluster_route(&e) => {
            let w: ClusterWorkload = cluster_or(e, c.t.call(&client::remove_cluster(id)))?;
            println!("{} removed from the cluster", w.name);
        }
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

/// Write to stdout now; false when its reader went away (`catenary logs -f X | head`): the
/// command then ends quietly instead of failing on a broken pipe.
fn emit(text: &str) -> Result<bool, CliError> {
    use std::io::Write;
    let mut o = std::io::stdout().lock();
    match o.write_all(text.as_bytes()).and_then(|_| o.flush()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(CliError::Other(format!("stdout: {e}"))),
    }
}

/// How long a follower (`logs -f`, `events -f`) keeps asking through failures that may pass.
pub const OUTAGE_MAX: Duration = Duration::from_secs(60);

/// A failure a follower waits out: the node (or the node it forwards to) did not answer, or
/// said it is busy or that another node did not answer. A refusal (403, 404, 400…) is final.
pub fn passing(e: &CallError) -> bool {
    match e {
        CallError::Unreachable(_) => true,
        CallError::Api(ClientError::Api { status, .. }) => matches!(status, 502..=504),
        CallError::Api(_) => false,
    }
}

/// A follower's run of failures that may pass: borne for at most [`OUTAGE_MAX`] in a row,
/// said once on stderr.
#[derive(Default)]
struct Outage {
    since: Option<std::time::Instant>,
}

impl Outage {
    /// True: wait `poll` and ask again; false: give up with `e`.
    fn bear(&mut self, e: &CallError, poll: Duration) -> bool {
        if !passing(e) {
            return false;
        }
        let since = *self.since.get_or_insert_with(|| {
            eprintln!("catenary: {e}; asking again for up to {} s", OUTAGE_MAX.as_secs());
            std::time::Instant::now()
        });
        if since.elapsed() >= OUTAGE_MAX {
            return false;
        }
        std::thread::sleep(poll.max(Duration::from_millis(500)));
        true
    }

    fn over(&mut self) {
        if self.since.take().is_some() {
            eprintln!("catenary: answered again; following");
        }
    }
}

/// `logs [-f]`: from the oldest byte kept; following polls from the cursor until the workload
/// has ended and everything it logged was read.
pub fn logs(c: &Ctx, id: &str, follow: bool, poll: Duration) -> R {
    let mut cursor = 0;
    let mut outage = Outage::default();
    loop {
        let l: Logs = match c.t.call(&client::logs(id, cursor)) {
            Ok(l) => l,
            Err(e) if follow && outage.bear(&e, poll) => continue,
            Err(e) => return Err(e.into()),
        };
        outage.over();
        if l.lost > 0 {
            eprintln!("[{} bytes dropped by the node before they were read]", l.lost);
        }
        for r in &l.records {
            let open = if c.json {
                emit(&format!("{}\n", serde_json::to_string(r).map_err(|e| CliError::Other(e.to_string()))?))?
            } else if r.stream == "stderr" {
                eprint!("{}", r.data);
                true
            } else {
                emit(&r.data)?
            };
            if !open {
                return Ok(());
            }
        }
        cursor = l.next;
        if l.next < l.end {
            continue;
        }
        if !follow {
            return Ok(());
        }
        let w: Workload = match c.t.call(&client::inspect(id)) {
            Ok(w) => w,
            Err(e) if outage.bear(&e, poll) => continue,
            Err(e) => return Err(e.into()),
        };
        outage.over();
        if matches!(w.state.as_str(), "exited" | "failed") && w.log_end <= cursor {
            return Ok(());
        }
        std::thread::sleep(poll);
    }
}

pub fn events(c: &Ctx, follow: bool, poll: Duration) -> R {
    let mut since = 0;
    let mut outage = Outage::default();
    loop {
        let l: EventList = match c.t.call(&client::events(since)) {
            Ok(l) => l,
            Err(e) if follow && outage.bear(&e, poll) => continue,
            Err(e) => return Err(e.into()),
        };
        outage.over();
        for e in &l.events {
            let line = if c.json {
                serde_json::to_string(e).map_err(|e| CliError::Other(e.to_string()))?
            } else {
                format!("{:>6} {:>10}ms {:<8} {:>4} {:<24} {:<9} {}", e.seq, e.time_ms, e.kind, e.workload, e.name, e.state, exit_text(&e.exit))
            };
            if !emit(&(line + "\n"))? {
                return Ok(());
            }
        }
        since = l.next;
        if !follow {
            return Ok(());
        }
        if l.events.is_empty() {
            std::thread::sleep(poll);
        }
    }
}

#[cfg(test)]
mod follow_tests {
    use super::*;

    fn api(status: u16, code: &str) -> CallError {
        CallError::Api(ClientError::Api { status, code: code.into(), message: String::new() })
    }

    #[test]
    fn a_follower_waits_out_silence_and_busy_nodes_but_not_refusals() {
        assert!(passing(&CallError::Unreachable("timed out".into())));
        assert!(passing(&api(503, "node_unavailable")));
        assert!(passing(&api(502, "bad_gateway")));
        assert!(!passing(&api(404, "no_such_workload")));
        assert!(!passing(&api(403, "forbidden")));
        assert!(!passing(&api(400, "bad_request")));
        let mut o = Outage::default();
        assert!(!o.bear(&api(404, "no_such_workload"), Duration::ZERO));
        assert!(o.since.is_none());
        // a fresh outage is waited out, and so is the next failure of the same run
        assert!(o.bear(&api(503, "node_unavailable"), Duration::ZERO));
        assert!(o.bear(&CallError::Unreachable("timed out".into()), Duration::ZERO));
        assert!(o.since.is_some());
        // a long outage is given up on
        o.since = Some(std::time::Instant::now() - OUTAGE_MAX);
        assert!(!o.bear(&api(503, "node_unavailable"), Duration::ZERO));
        o.over();
        assert!(o.since.is_none());
    }
}

#[cfg(test)]
mod cluster_route_tests {
    use super::*;

    fn api(status: u16, code: &str) -> CallError {
        CallError::Api(ClientError::Api { status, code: code.into(), message: code.into() })
    }

    #[test]
    fn a_name_no_node_answered_for_goes_to_the_cluster_route() {
        // `rm web` / `inspect web` of a cluster workload while a member is down
        assert!(try_cluster_route(&api(404, "no_such_workload")));
        assert!(try_cluster_route(&api(503, "node_unavailable")));
        assert!(!try_cluster_route(&api(503, "workd_unavailable")));
        assert!(!try_cluster_route(&api(403, "forbidden")));
        assert!(!try_cluster_route(&CallError::Unreachable("x".into())));
        // the cluster route has it: its answer
        assert_eq!(cluster_or(api(503, "node_unavailable"), Ok::<u8, CallError>(7)).unwrap(), 7);
        // neither has it: the silent member is the better error; after a plain 404, the 404
        let e = cluster_or::<u8>(api(503, "node_unavailable"), Err(api(404, "no_such_cluster_workload"))).unwrap_err();
        assert!(e.to_string().contains("node_unavailable"), "{e}");
        let e = cluster_or::<u8>(api(404, "no_such_workload"), Err(api(404, "no_such_cluster_workload"))).unwrap_err();
        assert!(e.to_string().contains("no_such_cluster_workload"), "{e}");
    }
}

#[cfg(test)]
mod label_tests {
    use super::parse_label_changes;

    #[test]
    fn label_changes_parse_as_set_and_remove() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let l = parse_label_changes(&s(&["zone=b", "gpu=", "disk-"])).unwrap();
        assert_eq!(l.set.get("zone").map(String::as_str), Some("b"));
        assert_eq!(l.set.get("gpu").map(String::as_str), Some(""));
        assert_eq!(l.remove, vec!["disk".to_string()]);
        assert!(parse_label_changes(&s(&["zone"])).is_err());
        assert!(parse_label_changes(&s(&["zone=a", "zone=b"])).is_err());
    }
}
