#![forbid(unsafe_code)]
//! `catenary`: Catenary's host tool. `catenary image pack` turns an OCI image into a Catenary
//! image (docs/images.md); the operator commands (`init`, `nodes`, `image push|ls|rm`, `run`,
//! `ps`, `logs`, `stop`, `rm`, `inspect`, `events`) speak the node's API (docs/api.md).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use catenary::image::{self, Limits, PackOptions};
use catenary::ops::commands::{self, CliError, Ctx, RunArgs};
use catenary::ops::config;
use catenary::ops::transport::{self, Choice, FabricNode};
use std::time::Duration;
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "catenary", version, about = "Catenary's host tool")]
struct Cli {
    /// The node's API endpoint, `[fabric /128]:port` (default: the config's `api`, or
    /// $CATENARY_API).
    #[arg(long, global = true, env = "CATENARY_API")]
    api: Option<String>,
    /// How requests travel: `fabric` (the CLI's own user-space fabric session; the default
    /// when a fabric node is known) or `host` (the host's TCP stack, through a WireGuard
    /// interface).
    #[arg(long, global = true, env = "CATENARY_TRANSPORT")]
    transport: Option<String>,
    /// The node for the embedded fabric, NODEKEY@HOST:PORT (its public key and UDP endpoint;
    /// default: the config's `fabric`).
    #[arg(long, global = true, env = "CATENARY_FABRIC_NODE")]
    fabric_node: Option<String>,
    /// Seconds to wait for the node (handshake, connection, or any stall of an answer).
    #[arg(long, global = true, default_value_t = 15)]
    timeout: u64,
    /// Print the node's JSON answers instead of tables (read commands).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Make an operator key (from the OS entropy source) and config under the user's config
    /// directory; prints the public key to add to the cluster file.
    Init {
        /// Set the API endpoint (`[fabric /128]:port`) in the config.
        #[arg(long = "set-api")]
        set_api: Option<String>,
        /// Set the node the embedded fabric reaches: NODEKEY@HOST:PORT.
        #[arg(long = "set-fabric")]
        set_fabric: Option<String>,
        /// Operator name for the printed cluster-file line.
        #[arg(long, default_value = "operator")]
        name: String,
        /// Replace an existing key.
        #[arg(long)]
        force: bool,
    },
    /// Write a WireGuard config (0600) that makes this workstation a fabric peer of the cluster
    /// with the operator key, for `wg-quick` or `wireguard-go` + `wg` (docs/api.md).
    WgConfig {
        /// The cluster file (`catenary-cluster v1`).
        #[arg(long)]
        cluster: PathBuf,
        /// The interface on the nodes' link, for link-local underlay endpoints.
        #[arg(long)]
        iface: Option<String>,
        /// Where to write it.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// The cluster's nodes: state, membership (alive, suspect, dead, left) and incarnation,
    /// CPUs, memory, workloads, labels.
    Nodes,
    /// A local cluster: `cluster new --nodes N [--dir D]` makes the node keys, the cluster
    /// file and the operator config (no node is contacted); `cluster relay --switch SOCK`
    /// reaches its nodes' vde_switch from this workstation.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Catenary images: pack an OCI image, verify a packed one; push, list, remove on a node.
    #[command(subcommand)]
    Image(ImageCmd),
    /// Cluster nodes: `node drain NODE`, `node undrain NODE`, `node leave NODE`; `node add KEY`
    /// admits a node's key into membership, `node remove NODE` takes it out, `node label NODE
    /// k=v k-` sets and removes its labels (admin).
    #[command(subcommand)]
    Node(NodeCmd),
    /// Run an image as a workload; prints its id and name.
    Run {
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        cpus: Option<u8>,
        /// Guest memory in MiB.
        #[arg(long)]
        mem: Option<u32>,
        /// NAME=value (repeatable).
        #[arg(long = "env", short = 'e')]
        env: Vec<String>,
        /// no, always, on-failure or on-failure:N.
        #[arg(long)]
        restart: Option<String>,
        /// `none`: no network device. Default: a network device with the workload's own /128
        /// of the node's /64, reachable over the fabric.
        #[arg(long, value_parser = ["none", "fabric"])]
        net: Option<String>,
        /// Put it into the cluster's replicated desired state, run on this many nodes (each
        /// replica as cl-NAME-R); needs --name.
        #[arg(long)]
        replicas: Option<u32>,
        /// A placement constraint on the nodes' labels (the cluster file's `node` lines),
        /// KEY=VALUE or KEY!=VALUE (repeatable); makes it a cluster workload.
        #[arg(long = "constraint")]
        constraint: Vec<String>,
        /// A health check: a shell command (`/bin/sh -c CMD` in the guest, as the workload's
        /// user, in its environment) that exits 0 when the workload is healthy. The first pass
        /// makes it healthy; --health-retries failures in a row kill it (its restart policy
        /// applies).
        #[arg(long)]
        health_cmd: Option<String>,
        /// Seconds between health checks (default 10).
        #[arg(long, requires = "health_cmd")]
        health_interval: Option<u32>,
        /// Seconds a health check may take (default 5, at most the interval).
        #[arg(long, requires = "health_cmd")]
        health_timeout: Option<u32>,
        /// Failures in a row that make the workload unhealthy (default 3).
        #[arg(long, requires = "health_cmd")]
        health_retries: Option<u32>,
        /// Seconds after the start in which failures do not count (default 0).
        #[arg(long, requires = "health_cmd")]
        health_start_period: Option<u32>,
        /// A digest (sha256:…) or a packed image directory.
        image: String,
        /// Replace the image's cmd.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The workloads on the nodes, then the cluster's workloads (replicas running/desired
    /// and their nodes).
    Ps,
    /// A workload's log; -f follows it until the workload has ended.
    Logs {
        #[arg(short, long)]
        follow: bool,
        id: String,
    },
    /// Stop a workload (its StopSignal, then SIGKILL after the grace period).
    Stop {
        #[arg(long)]
        grace_ms: Option<u32>,
        id: String,
    },
    /// Remove a workload that does not run.
    Rm { id: String },
    /// A workload's full status (JSON).
    Inspect { id: String },
    /// Workload events; -f follows.
    Events {
        #[arg(short, long)]
        follow: bool,
    },
    /// Check the embedded fabric against a TCP echo service at --api: send BYTES bytes, expect
    /// them back (a diagnostic: the `net.tcpecho` probe of a node booted with the probes kernel
    /// answers so; the node kernel as shipped has no such probe).
    #[command(hide = true)]
    FabricProbe {
        #[arg(long, default_value_t = 4096)]
        bytes: usize,
    },
    /// Benchmark figures through one session (`cargo xtask bench api`): GET latency, an image
    /// push, a TCP echo to `--echo [ADDR]:PORT`.
    #[command(hide = true)]
    BenchApi {
        #[arg(long, default_value_t = 200)]
        gets: usize,
        #[arg(long)]
        push: Option<PathBuf>,
        #[arg(long)]
        echo: Option<String>,
        #[arg(long, default_value_t = 1 << 20)]
        echo_bytes: usize,
    },
}

#[derive(Subcommand)]
enum NodeCmd {
    /// The cluster's scheduler moves every replica off NODE (name or key) and places nothing
    /// there any more.
    Drain { node: String },
    /// The scheduler may place replicas on a drained NODE again.
    Undrain { node: String },
    /// NODE (its name) leaves the cluster gracefully: the other nodes show it `left` at once
    /// (never `dead`), and the cluster drains it, so its replicas start elsewhere. The node
    /// keeps running outside the cluster; restarted, it joins again (still drained).
    Leave { node: String },
    /// Admit a node's fabric public key (64 hex; a pending node's, as `catenary nodes` shows
    /// it): committed in the replicated desired state, from which every node's fabric and
    /// membership service let it in.
    Add { key: String },
    /// Set and remove NODE's labels (admin): `node label node2 zone=b gpu=yes disk-` sets
    /// zone and gpu and removes disk (a cluster-file label too). Committed in the replicated
    /// desired state, over the cluster file's labels; `run --constraint` placement follows
    /// it, and replicas whose constraints NODE no longer meets move. At most 16 changes; key
    /// 1-63 of a-z 0-9 . _ - /, value 0-63 of A-Z a-z 0-9 . _ -.
    Label {
        node: String,
        #[arg(required = true)]
        changes: Vec<String>,
    },
    /// Remove NODE (its name, node-XXXXXXXX, or its 64-hex key) from the cluster (admin):
    /// committed in the replicated desired state; every node's fabric drops it as a peer and
    /// its membership service forgets it, its replicas move, and its key is refused after.
    Remove { node: String },
}

#[derive(Subcommand)]
enum ClusterCmd {
    /// Node keys (`nodeK.key`, 0600, from the OS entropy source; never printed), the cluster
    /// file (`cluster.txt`) and the operator config (`operator/`, admin) in DIR.
    New {
        #[arg(long)]
        nodes: usize,
        #[arg(long, default_value = "cluster")]
        dir: PathBuf,
        /// Replace a cluster already in DIR (new keys).
        #[arg(long)]
        force: bool,
    },
    /// The workstation's way onto a local cluster's vde_switch (no root): `vde_plug SWITCH`
    /// and a relay from a localhost UDP port to NODE's underlay address and port (from
    /// DIR/cluster.txt), written as the operator config's fabric endpoint (DIR/operator, or
    /// $CATENARY_CONFIG_DIR). Runs until Ctrl-C (SIGINT) or SIGTERM.
    Relay {
        /// The switch's socket directory (`vde_switch -s`).
        #[arg(long)]
        switch: PathBuf,
        #[arg(long, default_value = "cluster")]
        dir: PathBuf,
        /// The node (its name in the cluster file; default: the first, node1).
        #[arg(long)]
        node: Option<String>,
    },
}

#[derive(Subcommand)]
enum ImageCmd {
    /// Pack an OCI image layout directory or a `docker save` tarball into a Catenary image
    /// directory (rootfs.squashfs, config.json, image.json). Prints the image digest.
    Pack(PackArgs),
    /// Check a Catenary image directory against its digest; prints the digest.
    Verify {
        dir: PathBuf,
        /// Expected digest (sha256:<hex>); without it, only the files named by image.json are checked.
        #[arg(long)]
        digest: Option<String>,
    },
    /// Upload a packed image directory to the node (in chunks, resumable); prints its digest.
    Push { dir: PathBuf },
    /// The images in the node's store.
    Ls,
    /// Remove an image from the node's store.
    Rm { digest: String },
}

fn operate(choice: Choice, json: bool, cmd: Cmd) -> Result<(), CliError> {
    let poll = Duration::from_millis(500);
    if let Cmd::Init { set_api, set_fabric, name, force } = cmd {
        let dir = config::config_dir().map_err(CliError::Other)?;
        if let Some(f) = &set_fabric {
            FabricNode::parse(f).map_err(CliError::Other)?;
        }
        if (set_api.is_some() || set_fabric.is_some()) && dir.join(config::KEY_FILE).exists() && !force {
            config::set(&dir, set_api.as_deref(), set_fabric.as_deref()).map_err(CliError::Other)?;
            eprintln!("config updated");
            return Ok(());
        }
        let cfg = config::init(&dir, set_api, force).map_err(CliError::Other)?;
        if set_fabric.is_some() {
            config::set(&dir, None, set_fabric.as_deref()).map_err(CliError::Other)?;
        }
        eprintln!("operator key written to {} (mode 0600)", dir.join(config::KEY_FILE).display());
        eprintln!("fabric address {}; add this line to the cluster file (role admin or viewer):", cfg.address);
        println!("operator {name} {} admin", cfg.public_key);
        return Ok(());
    }
    if let Cmd::Cluster(ClusterCmd::New { nodes, dir, force }) = cmd {
        let c = catenary::ops::clusternew::create(&dir, nodes, force).map_err(CliError::Other)?;
        for m in &c.members {
            println!("{} {}", m.name, catenary_net::cluster::hex_encode(&m.public_key));
        }
        eprintln!("{} node keys (mode 0600), cluster file {}, operator config {} (admin, API: node1's fabric address)",
            nodes, dir.join("cluster.txt").display(), dir.join("operator").display());
        eprintln!("use it: export CATENARY_CONFIG_DIR={}", dir.join("operator").display());
        return Ok(());
    }
    if let Cmd::Cluster(ClusterCmd::Relay { switch, dir, node }) = cmd {
        let op_dir = catenary::ops::relay::operator_dir(&dir, std::env::var_os("CATENARY_CONFIG_DIR").map(PathBuf::from));
        return catenary::ops::relay::run(&switch, &dir, node.as_deref(), &op_dir).map_err(CliError::Other);
    }
    if let Cmd::WgConfig { cluster, iface, output } = cmd {
        let dir = config::config_dir().map_err(CliError::Other)?;
        catenary::ops::wgconfig::write(&dir, &cluster, iface.as_deref(), &output).map_err(CliError::Other)?;
        eprintln!("wrote {} (mode 0600; it holds the operator's private key)", output.display());
        return Ok(());
    }
    let dir = config::config_dir().map_err(CliError::Other)?;
    let c = Ctx { t: transport::choose(choice, &dir).map_err(CliError::Other)?, json };
    match cmd {
        Cmd::Nodes => commands::nodes(&c),
        Cmd::Node(NodeCmd::Add { key }) => commands::node_add(&c, &key),
        Cmd::Node(NodeCmd::Label { node, changes }) => commands::node_label(&c, &node, &changes),
        Cmd::Node(NodeCmd::Remove { node }) => commands::node_remove(&c, &node),
        Cmd::Image(ImageCmd::Push { dir }) => commands::image_push(&c, &dir),
        Cmd::Image(ImageCmd::Ls) => commands::images(&c),
        Cmd::Image(ImageCmd::Rm { digest }) => commands::image_rm(&c, &digest),
        Cmd::Run { name, cpus, mem, env, restart, net, replicas, constraint, health_cmd, health_interval, health_timeout, health_retries, health_start_period, image, args } => {
            let health = health_cmd.map(|cmd| catenary_api::types::HealthCheck {
                cmd: vec!["/bin/sh".into(), "-c".into(), cmd],
                interval_secs: health_interval,
                timeout_secs: health_timeout,
                retries: health_retries,
                start_period_secs: health_start_period,
            });
            commands::run(&c, RunArgs { name, cpus, memory_mib: mem, env, restart, net: net.as_deref() != Some("none"), replicas, constraints: constraint, health, image, args })
        }
        Cmd::Ps => commands::ps(&c),
        Cmd::Logs { follow, id } => commands::logs(&c, &id, follow, poll),
        Cmd::Stop { grace_ms, id } => commands::stop(&c, &id, grace_ms),
        Cmd::Rm { id } => commands::rm(&c, &id),
        Cmd::Node(NodeCmd::Drain { node }) => commands::drain(&c, &node),
        Cmd::Node(NodeCmd::Undrain { node }) => commands::undrain(&c, &node),
        Cmd::Node(NodeCmd::Leave { node }) => commands::leave(&c, &node),
        Cmd::Inspect { id } => commands::inspect(&c, &id),
        Cmd::Events { follow } => commands::events(&c, follow, poll),
        Cmd::FabricProbe { bytes } => {
            let sent: Vec<u8> = (0..bytes.min(1 << 20)).map(|i| (i * 7 % 251) as u8).collect();
            let start = std::time::Instant::now();
            let got = c.t.echo(&sent)?;
            if got[..sent.len()] != sent[..] {
                return Err(CliError::Other(format!("fabric-probe: {} bytes came back, not the ones sent", got.len())));
            }
            println!("fabric-probe: {} bytes echoed by {} in {} ms", sent.len(), c.t.endpoint, start.elapsed().as_millis());
            Ok(())
        }
        Cmd::BenchApi { gets, push, echo, echo_bytes } => catenary::ops::bench::bench(&c, gets.min(100_000), push.as_deref(), echo.as_deref(), echo_bytes.min(64 << 20)),
        Cmd::Init { .. } | Cmd::WgConfig { .. } | Cmd::Cluster(_) | Cmd::Image(ImageCmd::Pack(_) | ImageCmd::Verify { .. }) => Ok(()),
    }
}

#[derive(Args)]
struct PackArgs {
    /// OCI image layout directory, or a `docker save` tarball.
    input: PathBuf,
    /// Output directory (created; must not exist unless --force).
    #[arg(short, long)]
    output: PathBuf,
    /// Image to take from the input: its tag (org.opencontainers.image.ref.name,
    /// io.containerd.image.name or a docker RepoTag). Needed when the input holds several.
    #[arg(long = "ref")]
    reference: Option<String>,
    /// Replace an existing output directory.
    #[arg(long)]
    force: bool,
    /// Most tar entries over all layers.
    #[arg(long, default_value_t = Limits::default().max_entries)]
    max_entries: u64,
    /// Most bytes of file content over all layers.
    #[arg(long, default_value_t = Limits::default().max_total_bytes)]
    max_bytes: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Image(ImageCmd::Pack(_) | ImageCmd::Verify { .. }) => {}
        cmd => {
            let choice = Choice { api: cli.api, via: cli.transport, fabric_node: cli.fabric_node, timeout: Duration::from_secs(cli.timeout.max(1)) };
            return match operate(choice, cli.json, cmd) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("catenary: {e}");
                    ExitCode::from(e.exit_code())
                }
            }
        }
    }
    match cli.cmd {
        Cmd::Image(ImageCmd::Pack(a)) => {
            let opts = PackOptions {
                reference: a.reference,
                limits: Limits { max_entries: a.max_entries, max_total_bytes: a.max_bytes, ..Limits::default() },
                force: a.force,
                progress: std::io::stderr().is_terminal(),
            };
            match image::pack(&a.input, &a.output, &opts) {
                Ok(r) => {
                    for w in &r.warnings {
                        eprintln!("warning: {w}");
                    }
                    eprintln!("packed {} entries into {} ({} bytes of squashfs)", r.nodes, a.output.display(), r.manifest.rootfs.size);
                    println!("{}", r.digest);
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("catenary image pack: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Image(ImageCmd::Verify { dir, digest }) => match image::verify(&dir, digest.as_deref()) {
            Ok((d, _)) => {
                println!("{d}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("catenary image verify: {e}");
                ExitCode::FAILURE
            }
        },
        _ => ExitCode::FAILURE,
    }
}
