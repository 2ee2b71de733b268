//! The control plane: etcd and kube-apiserver, both inside the control namespace.
//!
//! etcd listens on that namespace's loopback only; the apiserver on the LAN address
//! ([`CONTROL_IP`]), where node agents reach it. Neither ever binds a host port, so any
//! number of labs can run side by side.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use crate::Error;
use crate::kube_netns::{block_on_in_netns, client, get_raw};
use crate::lab::{APISERVER_PORT, CONTROL_IP, EtcdStorage, Lab};
use crate::pki::Pki;
use crate::process::{self, Spec};

const ETCD_CLIENT_URL: &str = "http://127.0.0.1:2379";
const ETCD_PEER_URL: &str = "http://127.0.0.1:2380";

/// The kube-apiserver binary: `TORTIE_APISERVER`, else where `scripts/deps` caches it.
pub fn apiserver_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("TORTIE_APISERVER") {
        return PathBuf::from(p);
    }
    let cache = std::env::var_os("TORTIE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/tortie"));
    cache.join("kube-apiserver")
}

pub fn etcd_pid_file(lab: &Lab) -> PathBuf {
    lab.control_dir().join("etcd.pid")
}
pub fn etcd_log(lab: &Lab) -> PathBuf {
    lab.control_dir().join("etcd.log")
}
pub fn apiserver_pid_file(lab: &Lab) -> PathBuf {
    lab.control_dir().join("apiserver.pid")
}
pub fn apiserver_log(lab: &Lab) -> PathBuf {
    lab.control_dir().join("apiserver.log")
}

fn os(args: &[String]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

pub fn etcd_spec(lab: &Lab) -> Spec {
    let data = lab.etcd_data_dir();
    let args = vec![
        "--name=tortie-lab".to_string(),
        format!("--data-dir={}", data.display()),
        format!("--listen-client-urls={ETCD_CLIENT_URL}"),
        format!("--advertise-client-urls={ETCD_CLIENT_URL}"),
        format!("--listen-peer-urls={ETCD_PEER_URL}"),
        format!("--initial-advertise-peer-urls={ETCD_PEER_URL}"),
        format!("--initial-cluster=tortie-lab={ETCD_PEER_URL}"),
        "--log-level=warn".to_string(),
        "--logger=zap".to_string(),
    ];
    Spec {
        netns: lab.control_netns(),
        program: PathBuf::from("etcd"),
        args: os(&args),
        env: Vec::new(),
        clear_env: false,
        log: etcd_log(lab),
        pid_file: etcd_pid_file(lab),
    }
}

pub fn apiserver_spec(lab: &Lab) -> Spec {
    let pki = Pki::of(lab);
    let args = vec![
        format!("--etcd-servers={ETCD_CLIENT_URL}"),
        format!("--bind-address={CONTROL_IP}"),
        format!("--advertise-address={CONTROL_IP}"),
        format!("--secure-port={APISERVER_PORT}"),
        // v1.20 still opens an unauthenticated port on 127.0.0.1:8080 unless told not to.
        "--insecure-port=0".to_string(),
        format!("--tls-cert-file={}", pki.apiserver_cert.display()),
        format!("--tls-private-key-file={}", pki.apiserver_key.display()),
        format!("--client-ca-file={}", pki.ca_cert.display()),
        format!("--token-auth-file={}", lab.token_file().display()),
        "--authorization-mode=RBAC".to_string(),
        format!("--service-account-key-file={}", pki.sa_pub.display()),
        format!(
            "--service-account-signing-key-file={}",
            pki.sa_key.display()
        ),
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local".to_string(),
        "--service-cluster-ip-range=10.96.0.0/12".to_string(),
        "--allow-privileged=true".to_string(),
        // No controller-manager creates the `default` ServiceAccounts that this admission
        // plugin insists on, and the lab creates Pod objects itself.
        "--disable-admission-plugins=ServiceAccount".to_string(),
        format!(
            "--cert-dir={}",
            lab.control_dir().join("apiserver-certs").display()
        ),
        "--profiling=false".to_string(),
    ];
    Spec {
        netns: lab.control_netns(),
        program: apiserver_binary(),
        args: os(&args),
        env: Vec::new(),
        clear_env: false,
        log: apiserver_log(lab),
        pid_file: apiserver_pid_file(lab),
    }
}

/// What `ensure_*` found or did.
#[derive(Debug)]
pub enum Started {
    /// It was already running with this pid.
    Running(i32),
    /// We just started it.
    Spawned(Child),
}

/// Starts etcd unless it runs, with its data on `storage` (a folder that already holds
/// data keeps it where it is: see [`etcd_storage_in_place`]).
pub fn ensure_etcd(lab: &Lab, storage: EtcdStorage) -> Result<Started, Error> {
    if let Some(pid) = process::running(lab, &etcd_pid_file(lab)) {
        return Ok(Started::Running(pid));
    }
    let data = lab.etcd_data_dir();
    crate::mkdir(&data)?;
    if storage == EtcdStorage::Tmpfs {
        mount_tmpfs_if_new(&data)?;
    }
    Ok(Started::Spawned(process::spawn(lab, &etcd_spec(lab))?))
}

/// Where the data etcd already has lives: on a tmpfs when one is mounted on its folder, on
/// disk when the folder holds files, `None` when there is no data yet.
pub fn etcd_storage_in_place(lab: &Lab) -> Option<EtcdStorage> {
    let data = lab.etcd_data_dir();
    if crate::teardown::mounts_under(&data).contains(&data) {
        return Some(EtcdStorage::Tmpfs);
    }
    let has_files = std::fs::read_dir(&data).is_ok_and(|mut d| d.next().is_some());
    has_files.then_some(EtcdStorage::Disk)
}

/// `up --etcd-storage tmpfs`: etcd's data in memory. The lab is disposable, and a slow disk
/// (this VM's takes ~10 ms per fsync) makes every apiserver write, and so every pod ADD,
/// measure the disk rather than tortie; a production etcd on an SSD fsyncs in about a
/// millisecond. Only an empty folder is mounted over, so a lab that already has data keeps
/// it; `down` unmounts everything under the state folder.
fn mount_tmpfs_if_new(dir: &Path) -> Result<(), Error> {
    let io = |source: std::io::Error| Error::Io {
        what: format!("mounting a tmpfs for etcd on {}", dir.display()),
        source,
    };
    let mounted = crate::teardown::mounts_under(dir).iter().any(|m| m == dir);
    if mounted || std::fs::read_dir(dir).map_err(io)?.next().is_some() {
        return Ok(());
    }
    nix::mount::mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
        Some("size=1g,mode=0700"),
    )
    .map_err(|e| io(e.into()))
}

/// Starts kube-apiserver unless it runs; `restart` replaces a running one (the token file
/// changed, and the apiserver reads it only at start).
pub fn ensure_apiserver(lab: &Lab, restart: bool) -> Result<Started, Error> {
    if let Some(pid) = process::running(lab, &apiserver_pid_file(lab)) {
        if !restart {
            return Ok(Started::Running(pid));
        }
        process::kill_all(&[pid], Duration::from_secs(5))?;
    }
    let spec = apiserver_spec(lab);
    if !spec.program.exists() {
        return Err(Error::Invalid(format!(
            "{} not found: run scripts/deps (it builds kube-apiserver v1.20.2 once and caches it)",
            spec.program.display()
        )));
    }
    Ok(Started::Spawned(process::spawn(lab, &spec)?))
}

/// Polls the apiserver's `/readyz` as admin until it answers 200. Fails early, with the log's
/// last lines, when etcd or the apiserver dies meanwhile.
pub fn wait_ready(lab: &Lab, timeout: Duration) -> Result<(), Error> {
    let kubeconfig = lab.admin_kubeconfig();
    let checks = lab.clone();
    block_on_in_netns(&lab.control_netns(), move || async move {
        let client = client(&kubeconfig).await?;
        let start = Instant::now();
        loop {
            let last = match get_raw(&client, "/readyz").await {
                Ok(_) => return Ok(()),
                Err(e) => e.to_string(),
            };
            for (what, pid_file, log) in [
                ("etcd", etcd_pid_file(&checks), etcd_log(&checks)),
                (
                    "kube-apiserver",
                    apiserver_pid_file(&checks),
                    apiserver_log(&checks),
                ),
            ] {
                if process::running(&checks, &pid_file).is_none() {
                    return Err(Error::Command(format!(
                        "{what} exited; last lines of {}:\n{}",
                        log.display(),
                        process::log_tail(&log, 15)
                    )));
                }
            }
            if start.elapsed() > timeout {
                return Err(Error::Timeout {
                    what: format!("kube-apiserver /readyz (last: {last})"),
                    secs: timeout.as_secs_f64(),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })?
}
