//! A real etcd + kube-apiserver (v1.20.2, from `scripts/deps`) for one test, inside a
//! network namespace of its own so that it never binds a port on the host.
//!
//! Real but small: a throwaway CA and serving certificate made with rcgen, token auth
//! with one admin token (group system:masters), RBAC on. Dropping [`Apiserver`] kills both
//! processes and deletes the namespace and its files, also when the test fails.
//!
//! A socket belongs to the namespace of the thread that creates it, so clients run on a
//! fresh OS thread that joins the namespace first ([`Apiserver::block_on`]), each with its
//! own single-threaded runtime.

use std::fs;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::sched::CloneFlags;

const TOKEN: &str = "tortie-test-admin-token";
const PORT: u16 = 6443;

static NEXT: AtomicU32 = AtomicU32::new(0);

pub type Error = Box<dyn std::error::Error + Send + Sync>;

pub struct Apiserver {
    netns: String,
    dir: tempfile::TempDir,
    /// etcd, then kube-apiserver.
    children: Vec<Child>,
    /// kube-apiserver's command line, to start it again after [`Apiserver::stop_apiserver`].
    apiserver_args: Vec<String>,
}

/// The kube-apiserver binary: `TORTIE_APISERVER`, else where `scripts/deps` caches it.
fn apiserver_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("TORTIE_APISERVER") {
        return PathBuf::from(p);
    }
    let cache = std::env::var_os("TORTIE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/tortie"));
    cache.join("kube-apiserver")
}

fn run(cmd: &mut Command) -> Result<(), Error> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into());
    }
    Ok(())
}

/// A CA and a serving certificate for 127.0.0.1 signed by it (rustls refuses a CA
/// certificate as the server's own), plus the service-account key pair v1.20 requires.
/// ECDSA P-256 keys as PKCS#8 PEM, which kube-apiserver v1.20 reads for all of them.
fn make_pki(dir: &Path) -> Result<(), Error> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };

    let not_before = time::OffsetDateTime::now_utc();
    let not_after = not_before + time::Duration::days(2);

    let mut ca = CertificateParams::default();
    ca.distinguished_name = rcgen::DistinguishedName::new();
    ca.distinguished_name
        .push(DnType::CommonName, "tortie-test-ca");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = not_before;
    ca.not_after = not_after;
    let ca_key = KeyPair::generate()?;
    fs::write(dir.join("ca.crt"), ca.self_signed(&ca_key)?.pem())?;
    let ca = Issuer::new(ca, ca_key);

    let mut server = CertificateParams::new(["127.0.0.1".to_string(), "localhost".to_string()])?;
    server.distinguished_name = rcgen::DistinguishedName::new();
    server
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    server.is_ca = IsCa::ExplicitNoCa;
    server.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server.not_before = not_before;
    server.not_after = not_after;
    let server_key = KeyPair::generate()?;
    fs::write(
        dir.join("server.crt"),
        server.signed_by(&server_key, &ca)?.pem(),
    )?;
    fs::write(dir.join("server.key"), server_key.serialize_pem())?;

    let sa = KeyPair::generate()?;
    fs::write(dir.join("sa.key"), sa.serialize_pem())?;
    fs::write(dir.join("sa.pub"), sa.public_key_pem())?;
    fs::write(
        dir.join("tokens.csv"),
        format!("{TOKEN},admin,admin,\"system:masters\"\n"),
    )?;
    let kubeconfig = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: https://127.0.0.1:{PORT}\n    certificate-authority: {ca}\nusers:\n- name: admin\n  user:\n    token: {TOKEN}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: admin\ncurrent-context: test\n",
        ca = dir.join("ca.crt").display()
    );
    fs::write(dir.join("kubeconfig"), kubeconfig)?;
    Ok(())
}

impl Apiserver {
    /// Starts etcd and the apiserver and waits until the apiserver answers as admin.
    pub fn start() -> Result<Apiserver, Error> {
        let binary = apiserver_binary();
        if !binary.exists() {
            return Err(format!(
                "{} not found: run scripts/deps (it builds kube-apiserver v1.20.2)",
                binary.display()
            )
            .into());
        }
        let netns = format!(
            "tds-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        run(Command::new("ip").args(["netns", "add", &netns]))?;
        let dir = tempfile::Builder::new()
            .prefix("tortie-apiserver-")
            .tempdir()?;
        // From here on, Drop cleans up whatever exists.
        let mut me = Apiserver {
            netns,
            dir,
            children: Vec::new(),
            apiserver_args: Vec::new(),
        };
        me.exec("ip", &["link", "set", "lo", "up"])?;
        make_pki(me.dir.path())?;
        let d = me.dir.path().to_path_buf();
        let p = |name: &str| d.join(name).display().to_string();
        me.spawn(
            "etcd",
            "etcd.log",
            &[
                "--name=test".into(),
                format!("--data-dir={}", me.etcd_dir().display()),
                "--listen-client-urls=http://127.0.0.1:2379".into(),
                "--advertise-client-urls=http://127.0.0.1:2379".into(),
                "--listen-peer-urls=http://127.0.0.1:2380".into(),
                "--initial-advertise-peer-urls=http://127.0.0.1:2380".into(),
                "--initial-cluster=test=http://127.0.0.1:2380".into(),
                "--log-level=warn".into(),
                "--logger=zap".into(),
            ],
        )?;
        me.apiserver_args = vec![
            binary.display().to_string(),
            "--etcd-servers=http://127.0.0.1:2379".into(),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            // Loopback is not a valid Endpoints address; nothing here needs the
            // `kubernetes` Service's endpoints.
            "--endpoint-reconciler-type=none".into(),
            format!("--secure-port={PORT}"),
            "--insecure-port=0".into(),
            format!("--tls-cert-file={}", p("server.crt")),
            format!("--tls-private-key-file={}", p("server.key")),
            format!("--token-auth-file={}", p("tokens.csv")),
            "--authorization-mode=RBAC".into(),
            format!("--service-account-key-file={}", p("sa.pub")),
            format!("--service-account-signing-key-file={}", p("sa.key")),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            "--service-cluster-ip-range=10.96.0.0/12".into(),
            "--disable-admission-plugins=ServiceAccount".into(),
            format!("--cert-dir={}", p("apiserver-certs")),
            "--profiling=false".into(),
        ];
        me.start_apiserver()?;
        Ok(me)
    }

    /// Kills kube-apiserver (etcd keeps the data); [`start_apiserver`](Self::start_apiserver)
    /// brings it back at the same address.
    pub fn stop_apiserver(&mut self) {
        if self.children.len() > 1 {
            let mut c = self.children.remove(1);
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts kube-apiserver and waits until it answers as admin.
    pub fn start_apiserver(&mut self) -> Result<(), Error> {
        let args = self.apiserver_args.clone();
        let Some((program, rest)) = args.split_first() else {
            return Err("no kube-apiserver command line".into());
        };
        self.spawn(program, "apiserver.log", rest)?;
        self.wait_ready(Duration::from_secs(90))
    }

    /// etcd's data lives in memory (/dev/shm): etcd fsyncs every commit, and on this
    /// machine's disk that alone costs more than the whole allocation path should.
    fn etcd_dir(&self) -> PathBuf {
        Path::new("/dev/shm").join(format!("{}-etcd", self.netns))
    }

    fn exec(&self, program: &str, args: &[&str]) -> Result<(), Error> {
        run(Command::new("ip")
            .args(["netns", "exec", &self.netns, program])
            .args(args))
    }

    fn spawn(&mut self, program: &str, log: &str, args: &[String]) -> Result<(), Error> {
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(log))?;
        let child = Command::new("ip")
            .args(["netns", "exec", &self.netns, program])
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .map_err(|e| format!("starting {program}: {e}"))?;
        self.children.push(child);
        Ok(())
    }

    /// The last lines of a log, for failure messages.
    pub fn log_tail(&self, log: &str) -> String {
        let text = fs::read_to_string(self.dir.path().join(log)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<(), Error> {
        let start = Instant::now();
        loop {
            for c in &mut self.children {
                if let Some(status) = c.try_wait()? {
                    return Err(format!(
                        "a control-plane process exited ({status}) during start\netcd:\n{}\napiserver:\n{}",
                        self.log_tail("etcd.log"),
                        self.log_tail("apiserver.log")
                    )
                    .into());
                }
            }
            let ok = self.block_on(|client| async move {
                let api: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(client);
                api.get("default").await.is_ok()
            });
            if matches!(ok, Ok(true)) {
                return Ok(());
            }
            if start.elapsed() > timeout {
                return Err(format!(
                    "kube-apiserver not ready after {timeout:?}:\n{}",
                    self.log_tail("apiserver.log")
                )
                .into());
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    /// Runs kubectl as admin inside the namespace; returns its stdout.
    pub fn kubectl(&self, args: &[&str]) -> Result<String, Error> {
        let kubeconfig = self.kubeconfig().display().to_string();
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.netns,
                "kubectl",
                "--kubeconfig",
                &kubeconfig,
            ])
            .args(args)
            .output()?;
        if !out.status.success() {
            return Err(format!(
                "kubectl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )
            .into());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// Runs `f(client)` to completion on a new OS thread inside the namespace, with its own
    /// single-threaded runtime and its own admin client.
    pub fn block_on<T, F, Fut>(&self, f: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(kube::Client) -> Fut + Send + 'static,
        Fut: Future<Output = T>,
    {
        self.spawn_in(f)
            .join()
            .map_err(|_| Error::from("the thread inside the apiserver's netns panicked"))?
    }

    /// Like [`block_on`](Self::block_on) but returns the thread, so several clients run at once.
    pub fn spawn_in<T, F, Fut>(&self, f: F) -> std::thread::JoinHandle<Result<T, Error>>
    where
        T: Send + 'static,
        F: FnOnce(kube::Client) -> Fut + Send + 'static,
        Fut: Future<Output = T>,
    {
        let path = Path::new("/run/netns").join(&self.netns);
        let kubeconfig = self.kubeconfig();
        std::thread::spawn(move || -> Result<T, Error> {
            let ns = fs::File::open(&path)?;
            nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET)?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let raw = kube::config::Kubeconfig::read_from(&kubeconfig)?;
                let config = kube::Config::from_custom_kubeconfig(
                    raw,
                    &kube::config::KubeConfigOptions::default(),
                )
                .await?;
                let client = kube::Client::try_from(config)?;
                Ok(f(client).await)
            })
        })
    }
}

impl Drop for Apiserver {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .output();
        let _ = fs::remove_dir_all(self.etcd_dir());
    }
}
