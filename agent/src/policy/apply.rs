//! The applier: writes a [`Dataplane`] into the kernel with `ipset restore` and
//! `iptables-restore --noflush` (docs/policy.md, "Applying").
//!
//! The pure half reads `iptables-save` and `ipset save` output into a [`KernelState`] and
//! diffs it against the desired [`Dataplane`] into a [`Plan`]: the restore inputs, what they
//! change and the state the kernel holds afterwards. The [`Applier`] runs the tools. It
//! remembers the state it left, so a steady-state `apply` runs nothing, and it reads the
//! kernel on its first call, so an agent restart rewrites only what is wrong.
//!
//! Only sets and chains whose names start with `tort`, and the hook rules in built-in chains
//! that jump to them, are ever written or removed. The V4 and V6 appliers share the ipset
//! namespace, so each one destroys only the sets of its own family.
//!
//! Blocking: the tools run as child processes, in the network namespace of the calling thread.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::Write;
use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::str::FromStr;

use ipnet::IpNet;
use sha1::{Digest, Sha1};

use super::model::{Dataplane, Family, SetKind, Table};

/// What tortie writes and reads: every chain and set of ours starts with this.
const PREFIX: &str = "tort";
/// The comment on the hook rules in built-in chains.
const HOOK_TAG: &str = "tort:hook";
/// Seconds `iptables-restore` waits for the xtables lock (legacy; nft accepts and ignores it).
const LOCK_WAIT_SECS: &str = "10";
/// The tables read and written, in the order they are written.
const TABLES: [Table; 2] = [Table::Filter, Table::Nat];

/// `FELIX_IPTABLESBACKEND`: which iptables the host uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendSetting {
    /// Whichever of legacy and nft holds more rules, nft on a tie (kube-proxy and Felix).
    #[default]
    Auto,
    Legacy,
    Nft,
}

impl FromStr for BackendSetting {
    type Err = InvalidBackendSetting;
    /// Case-insensitive, as Felix reads it: `Legacy`, `NFT`, `Auto`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(BackendSetting::Auto),
            "legacy" => Ok(BackendSetting::Legacy),
            "nft" => Ok(BackendSetting::Nft),
            _ => Err(InvalidBackendSetting(s.to_owned())),
        }
    }
}

impl fmt::Display for BackendSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendSetting::Auto => "Auto",
            BackendSetting::Legacy => "Legacy",
            BackendSetting::Nft => "NFT",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("FELIX_IPTABLESBACKEND={0:?} is not an iptables backend: use Legacy, NFT or Auto")]
pub struct InvalidBackendSetting(pub String);

/// The iptables implementation the rules go into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// `iptables-legacy-*`: the x_tables kernel interface.
    Legacy,
    /// `iptables-nft-*`: the same rules stored in nf_tables.
    Nft,
}

impl Backend {
    /// Resolves the setting. `Auto` counts the rules (`-A ` lines) that
    /// `iptables-legacy-save` and `iptables-nft-save` show (for V6 also the `ip6tables-`
    /// ones) and takes the side with more, nft on a tie. A save tool that cannot run counts
    /// as no rules; it is an error only when none of them can.
    pub fn detect(setting: BackendSetting, family: Family) -> Result<Backend, ApplyError> {
        detect_with(&mut SystemRunner, setting, family)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Legacy => "legacy",
            Backend::Nft => "nft",
        }
    }

    fn save_program(self, family: Family) -> &'static str {
        match (family, self) {
            (Family::V4, Backend::Legacy) => "iptables-legacy-save",
            (Family::V4, Backend::Nft) => "iptables-nft-save",
            (Family::V6, Backend::Legacy) => "ip6tables-legacy-save",
            (Family::V6, Backend::Nft) => "ip6tables-nft-save",
        }
    }

    fn restore_program(self, family: Family) -> &'static str {
        match (family, self) {
            (Family::V4, Backend::Legacy) => "iptables-legacy-restore",
            (Family::V4, Backend::Nft) => "iptables-nft-restore",
            (Family::V6, Backend::Legacy) => "ip6tables-legacy-restore",
            (Family::V6, Backend::Nft) => "ip6tables-nft-restore",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn detect_with(
    run: &mut dyn Runner,
    setting: BackendSetting,
    family: Family,
) -> Result<Backend, ApplyError> {
    match setting {
        BackendSetting::Legacy => return Ok(Backend::Legacy),
        BackendSetting::Nft => return Ok(Backend::Nft),
        BackendSetting::Auto => {}
    }
    let families: &[Family] = match family {
        Family::V4 => &[Family::V4],
        Family::V6 => &[Family::V4, Family::V6],
    };
    let mut last_error = None;
    let mut ran = false;
    let mut count = |backend: Backend| -> usize {
        families
            .iter()
            .map(|f| match run.run(backend.save_program(*f), &[], None) {
                Ok(out) => {
                    ran = true;
                    count_rules(&out)
                }
                Err(e) => {
                    tracing::debug!(error = %e, "backend detection: counting as no rules");
                    last_error = Some(e);
                    0
                }
            })
            .sum()
    };
    let legacy = count(Backend::Legacy);
    let nft = count(Backend::Nft);
    match last_error {
        Some(e) if !ran => Err(e),
        _ => {
            let backend = choose_backend(legacy, nft);
            tracing::info!(legacy, nft, %backend, "iptables backend detected (rules counted)");
            Ok(backend)
        }
    }
}

fn count_rules(save_output: &str) -> usize {
    save_output.lines().filter(|l| l.starts_with("-A ")).count()
}

fn choose_backend(legacy_rules: usize, nft_rules: usize) -> Backend {
    if legacy_rules > nft_rules {
        Backend::Legacy
    } else {
        Backend::Nft
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(
        "cannot run {program}: {source} (Debian and Ubuntu ship it in the iptables and ipset packages)"
    )]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}{}", at_line(.input_line))]
    Failed {
        command: String,
        status: String,
        stderr: String,
        /// The input line the tool named in its error, with its number.
        input_line: Option<(usize, String)>,
    },
    #[error("the dataplane is for {dataplane:?} but this applier writes {applier:?}")]
    FamilyMismatch { dataplane: Family, applier: Family },
    #[error(
        "the dataplane names {what} {name:?}: tortie only writes chains and sets whose names start with `{PREFIX}`"
    )]
    NotOurs { what: &'static str, name: String },
    #[error("rule {rule:?} of chain {chain} spans lines: a restore file takes one rule per line")]
    RuleSpansLines { chain: String, rule: String },
}

impl ApplyError {
    /// A failed command, for fakes in other modules' tests.
    #[cfg(test)]
    pub(crate) fn test_failure(stderr: &str) -> ApplyError {
        ApplyError::Failed {
            command: "test".to_owned(),
            status: "exit status: 1".to_owned(),
            stderr: stderr.to_owned(),
            input_line: None,
        }
    }
}

fn at_line(line: &Option<(usize, String)>) -> String {
    match line {
        Some((n, text)) => format!(" (input line {n}: {text})"),
        None => String::new(),
    }
}

/// What one `apply` or `check_drift` wrote, for the caller to log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// Sets created, or destroyed and created again because their type or family was wrong.
    pub sets_created: Vec<String>,
    /// Existing sets whose members changed.
    pub sets_updated: Vec<String>,
    pub sets_destroyed: Vec<String>,
    /// `add` lines: members of new sets, missing members, members whose `nomatch` changed.
    pub members_added: usize,
    pub members_removed: usize,
    /// Chains flushed and filled again (or created).
    pub chains_written: Vec<(Table, String)>,
    pub chains_removed: Vec<(Table, String)>,
    pub hooks_inserted: usize,
    pub hooks_removed: usize,
}

impl ApplyReport {
    /// Nothing was written.
    pub fn is_empty(&self) -> bool {
        *self == ApplyReport::default()
    }
}

impl fmt::Display for ApplyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("nothing to write");
        }
        write!(
            f,
            "sets: {} created, {} updated (+{} -{} members), {} destroyed; \
             chains: {} written, {} removed; hooks: {} inserted, {} removed",
            self.sets_created.len(),
            self.sets_updated.len(),
            self.members_added,
            self.members_removed,
            self.sets_destroyed.len(),
            self.chains_written.len(),
            self.chains_removed.len(),
            self.hooks_inserted,
            self.hooks_removed,
        )
    }
}

/// Writes one address family's [`Dataplane`], remembering what it wrote.
pub struct Applier {
    family: Family,
    backend: Backend,
    runner: Box<dyn Runner + Send>,
    /// What the kernel holds after our last successful write; `None`: read it first.
    known: Option<KernelState>,
    /// The dataplane that write was for, while `known` is `Some`: a chain whose rules are
    /// the same as then keeps its state without hashing and parsing every rule again,
    /// which at tens of thousands of rules is most of an apply's own time.
    written: Option<Dataplane>,
}

impl fmt::Debug for Applier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Applier")
            .field("family", &self.family)
            .field("backend", &self.backend)
            .field("knows_kernel", &self.known.is_some())
            .finish()
    }
}

impl Applier {
    pub fn new(family: Family, backend: Backend) -> Applier {
        Applier::with_runner(family, backend, Box::new(SystemRunner))
    }

    fn with_runner(family: Family, backend: Backend, runner: Box<dyn Runner + Send>) -> Applier {
        Applier {
            family,
            backend,
            runner,
            known: None,
            written: None,
        }
    }

    pub fn family(&self) -> Family {
        self.family
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Makes the kernel hold `desired`, writing only what differs from what this applier
    /// last wrote (or, the first time and after [`Applier::resync`] or an error, from what
    /// the kernel holds). Takes `desired` by value: it is kept as what was written, which at
    /// tens of thousands of rules is cheaper than a copy.
    pub fn apply(&mut self, desired: Dataplane) -> Result<ApplyReport, ApplyError> {
        let written = self.written.take();
        let previous = written.as_ref().filter(|_| self.known.is_some());
        self.validate(&desired, previous)?;
        let (current, previous) = match self.known.take() {
            Some(known) => (known, previous),
            None => (self.read_kernel(&desired)?, None),
        };
        let plan = Plan::new(current, &desired, previous, self.family);
        let report = self.execute(plan).map(|(report, _)| report)?;
        self.written = Some(desired);
        Ok(report)
    }

    /// Reads the kernel, returns what differs from `desired` (one line each) and repairs it.
    pub fn check_drift(&mut self, desired: Dataplane) -> Result<Vec<String>, ApplyError> {
        self.validate(&desired, None)?;
        self.known = None;
        self.written = None;
        let current = self.read_kernel(&desired)?;
        let plan = Plan::new(current, &desired, None, self.family);
        for drift in &plan.drift {
            tracing::warn!(family = ?self.family, "dataplane drift: {drift}");
        }
        let drift = self.execute(plan).map(|(_, drift)| drift)?;
        self.written = Some(desired);
        Ok(drift)
    }

    /// Forgets what was written: the next `apply` reads the kernel.
    pub fn resync(&mut self) {
        self.known = None;
        self.written = None;
    }

    /// Checks names and rules; a chain whose rules are those of `previous` (what was
    /// written, when the kernel is known to hold it) passed this check then.
    fn validate(
        &self,
        desired: &Dataplane,
        previous: Option<&Dataplane>,
    ) -> Result<(), ApplyError> {
        if let Some(family) = desired.family
            && family != self.family
        {
            return Err(ApplyError::FamilyMismatch {
                dataplane: family,
                applier: self.family,
            });
        }
        let not_ours = |what: &'static str, name: &str| ApplyError::NotOurs {
            what,
            name: name.to_owned(),
        };
        if let Some(name) = desired.ipsets.keys().find(|n| !n.starts_with(PREFIX)) {
            return Err(not_ours("set", name));
        }
        for (key, rules) in &desired.chains {
            let chain = &key.1;
            if !chain.starts_with(PREFIX) {
                return Err(not_ours("chain", chain));
            }
            if previous.and_then(|p| p.chains.get(key)) == Some(rules) {
                continue;
            }
            if let Some(rule) = rules
                .iter()
                .find(|r| r.bytes().any(|b| b == b'\n' || b == b'\r'))
            {
                return Err(ApplyError::RuleSpansLines {
                    chain: chain.clone(),
                    rule: rule.clone(),
                });
            }
        }
        if let Some(hook) = desired.hooks.iter().find(|h| !h.chain.starts_with(PREFIX)) {
            return Err(not_ours("hook target chain", &hook.chain));
        }
        Ok(())
    }

    fn read_kernel(&mut self, desired: &Dataplane) -> Result<KernelState, ApplyError> {
        let sets = parse_ipset_save(&self.runner.run("ipset", &["save"], None)?);
        let save = self.backend.save_program(self.family);
        let mut tables = BTreeMap::new();
        for table in TABLES {
            match self.runner.run(save, &["-t", table.as_str()], None) {
                Ok(out) => {
                    tables.insert(table, parse_iptables_save(&out));
                }
                // A table the dataplane does not use may be missing from the kernel (no nat
                // module): then nothing of ours is in it either.
                Err(e) if !uses_table(desired, table) => {
                    tracing::debug!(table = table.as_str(), error = %e, "cannot read unused table");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(KernelState { sets, tables })
    }

    /// Runs the plan's inputs; on success remembers the state they leave.
    fn execute(&mut self, plan: Plan) -> Result<(ApplyReport, Vec<String>), ApplyError> {
        let restore = self.backend.restore_program(self.family);
        let restore_args = ["--noflush", "-w", LOCK_WAIT_SECS];
        let steps = plan
            .preflush
            .iter()
            .map(|input| (restore, &restore_args[..], input))
            .chain(
                plan.ipset_before
                    .iter()
                    .map(|i| ("ipset", &["restore"][..], i)),
            )
            .chain(
                plan.iptables
                    .iter()
                    .map(|i| (restore, &restore_args[..], i)),
            )
            .chain(
                plan.ipset_after
                    .iter()
                    .map(|i| ("ipset", &["restore"][..], i)),
            );
        for (program, args, input) in steps {
            if let Err(e) = self.runner.run(program, args, Some(input)) {
                // A restore may have done part of its work (`ipset restore` is not atomic):
                // read the kernel next time rather than trust either state.
                self.known = None;
                return Err(e);
            }
        }
        if !plan.report.is_empty() {
            tracing::debug!(family = ?self.family, report = %plan.report, "dataplane written");
        }
        self.known = Some(plan.after);
        Ok((plan.report, plan.drift))
    }
}

fn uses_table(desired: &Dataplane, table: Table) -> bool {
    desired.chains.keys().any(|(t, _)| *t == table)
        || desired.hooks.iter().any(|h| h.table == table)
}

/// Runs a tool. The real one spawns it; unit tests fake it.
trait Runner {
    /// Runs `program args`, feeding `stdin`; returns its stdout, or an error naming the
    /// command, its stderr and the input line that stderr points at.
    fn run(
        &mut self,
        program: &str,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Result<String, ApplyError>;
}

/// `program args` joined by spaces: how errors, logs and the test fake name a command.
fn command_line(program: &str, args: &[&str]) -> String {
    std::iter::once(program)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ")
}

struct SystemRunner;

impl Runner for SystemRunner {
    fn run(
        &mut self,
        program: &str,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Result<String, ApplyError> {
        let command = command_line(program, args);
        tracing::debug!(%command, "running");
        if let Some(input) = stdin {
            tracing::trace!(%command, "input:\n{input}");
        }
        let mut child = Command::new(program)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| ApplyError::Spawn {
                program: program.to_owned(),
                source,
            })?;
        let pipe = child.stdin.take();
        // Feed stdin from another thread while this one drains stdout and stderr, so a large
        // input cannot deadlock against a full output pipe. The writer only writes to the
        // pipe; the child was spawned from this thread, in its network namespace.
        let output = std::thread::scope(|scope| {
            if let (Some(mut pipe), Some(input)) = (pipe, stdin) {
                scope.spawn(move || {
                    // A tool that stops reading has failed; its stderr says why.
                    let _ = pipe.write_all(input.as_bytes());
                });
            }
            child.wait_with_output()
        })
        .map_err(|source| ApplyError::Spawn {
            program: program.to_owned(),
            source,
        })?;
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
        if !output.status.success() {
            return Err(ApplyError::Failed {
                command,
                status: output.status.to_string(),
                input_line: stdin.and_then(|input| failed_line(&stderr, input)),
                stderr,
            });
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

/// The input line a restore tool's error names: `line 5 failed` (iptables-restore),
/// `Error occurred at line: 5` (legacy), `Error in line 5:` (ipset).
fn failed_line(stderr: &str, input: &str) -> Option<(usize, String)> {
    let mut rest = stderr;
    while let Some(at) = rest.find("line") {
        rest = &rest[at + "line".len()..];
        let digits: String = rest
            .trim_start_matches([':', ' '])
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        if let Ok(n) = digits.parse::<usize>()
            && n >= 1
        {
            let text = input.lines().nth(n - 1)?;
            return Some((n, text.to_owned()));
        }
    }
    None
}

/// The tag of a rule: `tort:` and the first 16 hex digits of the SHA-1 of its text.
pub fn rule_tag(rule: &str) -> String {
    let digest = Sha1::digest(rule.as_bytes());
    format!("{PREFIX}:{}", &hex::encode(digest)[..16])
}

/// The part of the kernel that is ours, as read from the save tools or as left by a write.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct KernelState {
    /// Every `tort*` set, of any family.
    sets: BTreeMap<String, KernelSet>,
    tables: BTreeMap<Table, TableState>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct KernelSet {
    /// As `ipset save` names it: `hash:ip`.
    set_type: String,
    /// `inet`, `inet6`; `None` for types without one (`list:set`).
    family: Option<String>,
    /// Normalised element to its flags (`""` or `"nomatch"`).
    members: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct TableState {
    /// `tort*` chains.
    chains: BTreeMap<String, KernelChain>,
    /// Built-in chains that have rules jumping to a `tort*` chain: those rules, in order.
    hooks: BTreeMap<String, Vec<HookRule>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct KernelChain {
    /// Each rule's `tort:` comment; `None` for a rule without one (added by hand).
    tags: Vec<Option<String>>,
    /// Sets its rules match on.
    sets: BTreeSet<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct HookRule {
    /// 0-based position in the built-in chain.
    position: usize,
    /// The `tort*` chain it jumps to.
    target: String,
    /// The rule as `iptables-save` prints it after `-A <builtin> `: enough to `-D` it.
    spec: String,
}

/// Reads `ipset save`: the `tort*` sets and their members.
fn parse_ipset_save(text: &str) -> BTreeMap<String, KernelSet> {
    let mut sets: BTreeMap<String, KernelSet> = BTreeMap::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("create"), Some(name)) if name.starts_with(PREFIX) => {
                let set_type = words.next().unwrap_or_default().to_owned();
                let mut family = None;
                while let Some(word) = words.next() {
                    if word == "family" {
                        family = words.next().map(str::to_owned);
                    }
                }
                sets.insert(
                    name.to_owned(),
                    KernelSet {
                        set_type,
                        family,
                        members: BTreeMap::new(),
                    },
                );
            }
            (Some("add"), Some(name)) => {
                if let Some(set) = sets.get_mut(name) {
                    let kind = set_kind(&set.set_type);
                    let member = words.collect::<Vec<_>>().join(" ");
                    let (element, flags) = normalize_member(kind, &member);
                    set.members.insert(element, flags);
                }
            }
            _ => {}
        }
    }
    sets
}

fn set_kind(set_type: &str) -> Option<SetKind> {
    [SetKind::HashIp, SetKind::HashNet, SetKind::HashIpPort]
        .into_iter()
        .find(|k| k.as_str() == set_type)
}

/// A member as the kernel keys it, and its `nomatch` flag. `ipset save` prints a hash:net
/// /32 (/128) as a bare address, masks host bits, prints a port without protocol as
/// `tcp:N`, and lists counters or comments of sets made with them: those are not members'
/// identity and are dropped. Addresses compare in their canonical text.
fn normalize_member(kind: Option<SetKind>, member: &str) -> (String, String) {
    let mut words = member.split_whitespace();
    let element = words.next().unwrap_or_default();
    let flags = if words.any(|w| w == "nomatch") {
        "nomatch"
    } else {
        ""
    };
    let element = match kind {
        Some(SetKind::HashIp) => normalize_address(element, false),
        Some(SetKind::HashNet) => normalize_address(element, true),
        Some(SetKind::HashIpPort) => match element.split_once(',') {
            Some((addr, port)) => {
                let port = port.to_ascii_lowercase();
                let port = if port.chars().all(|c| c.is_ascii_digit()) {
                    format!("tcp:{port}")
                } else {
                    port
                };
                format!("{},{port}", normalize_address(addr, false))
            }
            None => element.to_owned(),
        },
        None => element.to_owned(),
    };
    (element, flags.to_owned())
}

fn normalize_address(s: &str, mask: bool) -> String {
    if let Ok(addr) = s.parse::<IpAddr>() {
        return addr.to_string();
    }
    match s.parse::<IpNet>() {
        Ok(net) => {
            let net = if mask { net.trunc() } else { net };
            if net.prefix_len() == net.max_prefix_len() {
                net.addr().to_string()
            } else {
                net.to_string()
            }
        }
        Err(_) => s.to_owned(),
    }
}

/// Reads `iptables-save -t <table>`: our chains with their rules' tags, and the rules of
/// built-in chains that jump to one of ours.
fn parse_iptables_save(text: &str) -> TableState {
    let mut state = TableState::default();
    let mut builtins: BTreeMap<String, usize> = BTreeMap::new();
    for line in text.lines() {
        if let Some(decl) = line.strip_prefix(':') {
            let mut words = decl.split_whitespace();
            if let (Some(name), Some(policy)) = (words.next(), words.next()) {
                if name.starts_with(PREFIX) {
                    state.chains.entry(name.to_owned()).or_default();
                } else if policy != "-" {
                    builtins.insert(name.to_owned(), 0);
                }
            }
        } else if let Some(rest) = line.strip_prefix("-A ") {
            let (chain, spec) = rest.split_once(' ').unwrap_or((rest, ""));
            let words = split_words(spec);
            if chain.starts_with(PREFIX) {
                let entry = state.chains.entry(chain.to_owned()).or_default();
                entry.tags.push(comment_tag(&words));
                entry.sets.extend(match_sets(&words));
            } else if let Some(next) = builtins.get_mut(chain) {
                let position = *next;
                *next += 1;
                if let Some(target) = jump_target(&words).filter(|t| t.starts_with(PREFIX)) {
                    state
                        .hooks
                        .entry(chain.to_owned())
                        .or_default()
                        .push(HookRule {
                            position,
                            target: target.to_owned(),
                            spec: spec.to_owned(),
                        });
                }
            }
        }
    }
    state
}

/// Splits a rule into words as iptables-restore does: double quotes group, backslash escapes.
fn split_words(spec: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quoted = false;
    let mut chars = spec.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(next) = chars.next() {
                    word.push(next);
                }
                in_word = true;
            }
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

/// The first `--comment tort:...` of a rule (iptables-save may move it after `-i`/`-p`).
fn comment_tag(words: &[String]) -> Option<String> {
    words
        .windows(2)
        .find(|w| w[0] == "--comment" && w[1].starts_with("tort:"))
        .map(|w| w[1].clone())
}

fn jump_target(words: &[String]) -> Option<&str> {
    words
        .windows(2)
        .find(|w| matches!(w[0].as_str(), "-j" | "-g" | "--jump" | "--goto"))
        .map(|w| w[1].as_str())
}

fn match_sets(words: &[String]) -> impl Iterator<Item = String> + '_ {
    words
        .windows(2)
        .filter(|w| w[0] == "--match-set")
        .map(|w| w[1].clone())
}

/// Everything one write does, rendered, and the state it leaves.
#[derive(Debug, Default)]
struct Plan {
    /// `iptables-restore` inputs flushing the chains that use a set about to be recreated.
    preflush: Vec<String>,
    /// `ipset restore`: recreate, create, delete members, add members.
    ipset_before: Option<String>,
    /// `iptables-restore --noflush`, one per table with changes.
    iptables: Vec<String>,
    /// `ipset restore`: destroy the sets no longer wanted.
    ipset_after: Option<String>,
    report: ApplyReport,
    /// One line per difference found.
    drift: Vec<String>,
    after: KernelState,
}

/// What a table's restore input holds.
#[derive(Debug, Default)]
struct TableChanges {
    /// Chains to flush and fill, with their rules.
    write: BTreeMap<String, Vec<String>>,
    remove: BTreeSet<String>,
    /// Hook rules to delete: built-in chain and spec.
    unhook: Vec<(String, String)>,
    /// Hooks to insert at position 1, in this order (so the last one inserted ends first).
    hook: Vec<(String, String)>,
}

impl TableChanges {
    fn is_empty(&self) -> bool {
        self.write.is_empty()
            && self.remove.is_empty()
            && self.unhook.is_empty()
            && self.hook.is_empty()
    }
}

impl Plan {
    /// `previous`: the dataplane `current` was written for, when `current` is what we
    /// remember rather than what we read.
    /// `current` is consumed: what stays the same moves into [`Plan::after`] uncopied.
    fn new(
        mut current: KernelState,
        desired: &Dataplane,
        previous: Option<&Dataplane>,
        family: Family,
    ) -> Plan {
        let mut plan = Plan::default();
        let recreated = plan.diff_sets(&mut current, desired, previous, family);
        plan.diff_tables(current, desired, previous, &recreated);
        plan
    }

    /// Fills the ipset inputs; returns the sets that must be destroyed and created again.
    /// Sets whose members are those of `previous` are taken out of `current` as they are.
    fn diff_sets(
        &mut self,
        current: &mut KernelState,
        desired: &Dataplane,
        previous: Option<&Dataplane>,
        family: Family,
    ) -> BTreeSet<String> {
        let family_name = family.ipset_family();
        let mut recreate = Vec::new();
        let mut create = Vec::new();
        let mut dels = Vec::new();
        let mut adds = Vec::new();
        let mut after = BTreeMap::new();
        for (name, set) in &desired.ipsets {
            if previous.and_then(|p| p.ipsets.get(name)) == Some(set)
                && let Some(have) = current.sets.remove(name)
            {
                after.insert(name.clone(), have);
                continue;
            }
            let members: BTreeMap<String, String> = set
                .members
                .iter()
                .map(|m| normalize_member(Some(set.kind), m))
                .collect();
            let want_type = set.kind.as_str();
            let mut all = false;
            match current.sets.get(name) {
                None => {
                    self.drift.push(format!("ipset {name} is missing"));
                    create.push(format!(
                        "create {name} {want_type} family {family_name} -exist"
                    ));
                    self.report.sets_created.push(name.clone());
                    all = true;
                }
                Some(have)
                    if have.set_type != want_type
                        || have.family.as_deref() != Some(family_name) =>
                {
                    self.drift.push(format!(
                        "ipset {name} is {} family {}, want {want_type} family {family_name}",
                        have.set_type,
                        have.family.as_deref().unwrap_or("none"),
                    ));
                    recreate.push(format!("destroy {name}"));
                    create.push(format!(
                        "create {name} {want_type} family {family_name} -exist"
                    ));
                    self.report.sets_created.push(name.clone());
                    all = true;
                }
                Some(have) => {
                    let before = (dels.len(), adds.len());
                    for element in have.members.keys() {
                        if !members.contains_key(element) {
                            self.drift
                                .push(format!("ipset {name} has extra member {element}"));
                            dels.push(format!("del {name} {element} -exist"));
                        }
                    }
                    for (element, flags) in &members {
                        match have.members.get(element) {
                            Some(have_flags) if have_flags == flags => {}
                            Some(have_flags) => {
                                self.drift.push(format!(
                                    "ipset {name} member {element} has flags {have_flags:?}, want {flags:?}"
                                ));
                                adds.push(add_line(name, element, flags));
                            }
                            None => {
                                self.drift
                                    .push(format!("ipset {name} lacks member {element}"));
                                adds.push(add_line(name, element, flags));
                            }
                        }
                    }
                    if (dels.len(), adds.len()) != before {
                        self.report.sets_updated.push(name.clone());
                    }
                }
            }
            if all {
                adds.extend(members.iter().map(|(e, f)| add_line(name, e, f)));
            }
            after.insert(
                name.clone(),
                KernelSet {
                    set_type: want_type.to_owned(),
                    family: Some(family_name.to_owned()),
                    members,
                },
            );
        }
        let mut destroy = Vec::new();
        for (name, set) in &current.sets {
            if desired.ipsets.contains_key(name) {
                continue;
            }
            if set.family.as_deref() == Some(family_name) {
                self.drift.push(format!("ipset {name} is not wanted"));
                destroy.push(format!("destroy {name}"));
                self.report.sets_destroyed.push(name.clone());
            } else {
                // The other family's applier owns it.
                after.insert(name.clone(), set.clone());
            }
        }
        self.report.members_added = adds.len();
        self.report.members_removed = dels.len();
        let recreated = recreate
            .iter()
            .filter_map(|l| l.strip_prefix("destroy "))
            .map(str::to_owned)
            .collect();
        let before: Vec<String> = recreate
            .into_iter()
            .chain(create)
            .chain(dels)
            .chain(adds)
            .collect();
        self.ipset_before = restore_input(before);
        self.ipset_after = restore_input(destroy);
        self.after.sets = after;
        recreated
    }

    /// Chains whose rules are those of `previous` are taken out of `current` as they are.
    fn diff_tables(
        &mut self,
        mut current: KernelState,
        desired: &Dataplane,
        previous: Option<&Dataplane>,
        recreated: &BTreeSet<String>,
    ) {
        for table in TABLES {
            let name = table.as_str();
            let mut have = current.tables.remove(&table).unwrap_or_default();
            let mut changes = TableChanges::default();
            let mut after = TableState::default();

            // Chains using a set that is about to be destroyed must let go of it first.
            let preflush: BTreeSet<String> = have
                .chains
                .iter()
                .filter(|(_, c)| !c.sets.is_disjoint(recreated))
                .map(|(n, _)| n.clone())
                .collect();
            if !preflush.is_empty() {
                let mut input = format!("*{name}\n");
                for chain in &preflush {
                    input.push_str(&format!(":{chain} - [0:0]\n"));
                }
                input.push_str("COMMIT\n");
                self.preflush.push(input);
            }

            for (key, rules) in desired.chains.iter().filter(|((t, _), _)| *t == table) {
                let chain = &key.1;
                let same_as_written = previous
                    .and_then(|p| p.chains.get(key))
                    .is_some_and(|written| written == rules);
                if same_as_written
                    && !preflush.contains(chain)
                    && let Some(c) = have.chains.remove(chain)
                {
                    after.chains.insert(chain.clone(), c);
                    continue;
                }
                let tags: Vec<Option<String>> = rules.iter().map(|r| Some(rule_tag(r))).collect();
                match have.chains.get(chain) {
                    None => {
                        self.drift.push(format!("{name} chain {chain} is missing"));
                        changes.write.insert(chain.clone(), rules.clone());
                    }
                    Some(c) if c.tags != tags => {
                        self.drift.push(format!(
                            "{name} chain {chain} differs: {}",
                            describe_difference(&c.tags, &tags)
                        ));
                        changes.write.insert(chain.clone(), rules.clone());
                    }
                    Some(_) if preflush.contains(chain) => {
                        changes.write.insert(chain.clone(), rules.clone());
                    }
                    Some(_) => {}
                }
                let sets = rules
                    .iter()
                    .flat_map(|r| match_sets(&split_words(r)).collect::<Vec<_>>())
                    .collect();
                after
                    .chains
                    .insert(chain.clone(), KernelChain { tags, sets });
            }
            for chain in have.chains.keys() {
                if !desired.chains.contains_key(&(table, chain.clone())) {
                    self.drift
                        .push(format!("{name} chain {chain} is not wanted"));
                    changes.remove.insert(chain.clone());
                }
            }

            let mut wanted: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
            for hook in desired.hooks.iter().filter(|h| h.table == table) {
                wanted
                    .entry(hook.builtin.as_str())
                    .or_default()
                    .push(hook.chain.as_str());
            }
            let builtins: BTreeSet<&str> = wanted
                .keys()
                .copied()
                .chain(have.hooks.keys().map(String::as_str))
                .collect();
            for builtin in builtins {
                let want = wanted.get(builtin).map(Vec::as_slice).unwrap_or_default();
                let rules = have
                    .hooks
                    .get(builtin)
                    .map(Vec::as_slice)
                    .unwrap_or_default();
                let in_place = rules.len() == want.len()
                    && rules
                        .iter()
                        .zip(want)
                        .enumerate()
                        .all(|(i, (r, w))| r.position == i && r.target == *w);
                if in_place {
                    if !rules.is_empty() {
                        after.hooks.insert(builtin.to_owned(), rules.to_vec());
                    }
                    continue;
                }
                for rule in rules {
                    if !want.contains(&rule.target.as_str()) {
                        self.drift.push(format!(
                            "{name} {builtin} jumps to {} which is not wanted",
                            rule.target
                        ));
                    }
                    changes.unhook.push((builtin.to_owned(), rule.spec.clone()));
                }
                let mut placed = Vec::new();
                for (i, chain) in want.iter().enumerate() {
                    match rules.iter().find(|r| r.target == *chain) {
                        None => self
                            .drift
                            .push(format!("{name} hook {builtin} -> {chain} is missing")),
                        Some(r) if r.position != i => self.drift.push(format!(
                            "{name} hook {builtin} -> {chain} is rule {} of {builtin}, want {}",
                            r.position + 1,
                            i + 1
                        )),
                        Some(_) => {}
                    }
                    placed.push(HookRule {
                        position: i,
                        target: (*chain).to_owned(),
                        spec: hook_spec(chain),
                    });
                }
                changes.hook.extend(
                    want.iter()
                        .rev()
                        .map(|c| (builtin.to_owned(), (*c).to_owned())),
                );
                if !placed.is_empty() {
                    after.hooks.insert(builtin.to_owned(), placed);
                }
            }

            self.after.tables.insert(table, after);
            if changes.is_empty() {
                continue;
            }
            self.report
                .chains_written
                .extend(changes.write.keys().map(|c| (table, c.clone())));
            self.report
                .chains_removed
                .extend(changes.remove.iter().map(|c| (table, c.clone())));
            self.report.hooks_inserted += changes.hook.len();
            self.report.hooks_removed += changes.unhook.len();
            self.iptables.push(render_table(table, &changes));
        }
    }
}

fn add_line(set: &str, element: &str, flags: &str) -> String {
    if flags.is_empty() {
        format!("add {set} {element} -exist")
    } else {
        format!("add {set} {element} {flags} -exist")
    }
}

fn restore_input(lines: Vec<String>) -> Option<String> {
    if lines.is_empty() {
        return None;
    }
    Some(lines.into_iter().map(|l| l + "\n").collect())
}

fn hook_spec(chain: &str) -> String {
    format!("-m comment --comment \"{HOOK_TAG}\" -j {chain}")
}

/// Where two tag sequences first part, for a drift line.
fn describe_difference(have: &[Option<String>], want: &[Option<String>]) -> String {
    let show = |tag: Option<&Option<String>>| match tag {
        None => "no rule".to_owned(),
        Some(None) => "a rule without a tort: comment".to_owned(),
        Some(Some(tag)) => tag.clone(),
    };
    let at = have
        .iter()
        .zip(want)
        .position(|(h, w)| h != w)
        .unwrap_or(have.len().min(want.len()));
    format!(
        "{} rules, want {}; rule {} is {}, want {}",
        have.len(),
        want.len(),
        at + 1,
        show(have.get(at)),
        show(want.get(at))
    )
}

/// One table's `iptables-restore --noflush` input. Under `--noflush` a `:chain` line creates
/// the chain or flushes it, so only the chains named here change.
fn render_table(table: Table, changes: &TableChanges) -> String {
    let mut out = format!("*{}\n", table.as_str());
    for chain in changes.write.keys().chain(&changes.remove) {
        out.push_str(&format!(":{chain} - [0:0]\n"));
    }
    for (chain, rules) in &changes.write {
        for rule in rules {
            out.push_str(&format!(
                "-A {chain} -m comment --comment \"{}\" {rule}\n",
                rule_tag(rule)
            ));
        }
    }
    // Hooks go before their chain can be deleted.
    for (builtin, spec) in &changes.unhook {
        out.push_str(&format!("-D {builtin} {spec}\n"));
    }
    for chain in &changes.remove {
        out.push_str(&format!("-X {chain}\n"));
    }
    for (builtin, chain) in &changes.hook {
        out.push_str(&format!("-I {builtin} 1 {}\n", hook_spec(chain)));
    }
    out.push_str("COMMIT\n");
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::policy::model::{Hook, IpSet};
    use std::sync::{Arc, Mutex};

    fn set(kind: SetKind, members: &[&str]) -> IpSet {
        IpSet {
            kind,
            members: members.iter().map(|m| m.to_string()).collect(),
        }
    }

    fn dataplane() -> Dataplane {
        let mut d = Dataplane {
            family: Some(Family::V4),
            ..Dataplane::default()
        };
        d.ipsets.insert(
            "tort-s4-a".into(),
            set(SetKind::HashIp, &["10.0.0.1", "10.0.0.2"]),
        );
        d.ipsets.insert(
            "tort-s4-b".into(),
            set(
                SetKind::HashNet,
                &["10.0.0.0/8", "10.1.0.0/16 nomatch", "192.0.2.7/32"],
            ),
        );
        d.chains.insert(
            (Table::Filter, "tort-FORWARD".into()),
            vec![
                "-m conntrack --ctstate INVALID -j DROP".into(),
                "-i tort+ -j tort-pi-x".into(),
            ],
        );
        d.chains.insert(
            (Table::Filter, "tort-pi-x".into()),
            vec!["-m set --match-set tort-s4-a src -j MARK --set-xmark 0x10000/0x10000".into()],
        );
        d.hooks.push(Hook {
            table: Table::Filter,
            builtin: "FORWARD".into(),
            chain: "tort-FORWARD".into(),
        });
        d
    }

    /// What the kernel prints once `dataplane()` is in it (with iptables-save's reordering).
    fn saved_filter() -> String {
        let d = dataplane();
        let fwd = &d.chains[&(Table::Filter, "tort-FORWARD".to_string())];
        let pi = &d.chains[&(Table::Filter, "tort-pi-x".to_string())];
        format!(
            "# Generated by iptables-save v1.8.9\n*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n\
             :OUTPUT ACCEPT [0:0]\n:DOCKER - [0:0]\n:tort-FORWARD - [0:0]\n:tort-pi-x - [0:0]\n\
             -A FORWARD -m comment --comment \"tort:hook\" -j tort-FORWARD\n\
             -A FORWARD -j DOCKER\n\
             -A DOCKER -j tort-pi-x\n\
             -A tort-FORWARD -m comment --comment \"{}\" -m conntrack --ctstate INVALID -j DROP\n\
             -A tort-FORWARD -i tort+ -m comment --comment \"{}\" -j tort-pi-x\n\
             -A tort-pi-x -m comment --comment {} -m set --match-set tort-s4-a src -j MARK --set-xmark 0x10000/0x10000\n\
             COMMIT\n# Completed\n",
            rule_tag(&fwd[0]),
            rule_tag(&fwd[1]),
            rule_tag(&pi[0]),
        )
    }

    const SAVED_SETS: &str = "\
create other hash:ip family inet hashsize 1024 maxelem 65536
add other 10.9.9.9
create tort-s4-a hash:ip family inet hashsize 1024 maxelem 65536 bucketsize 12 initval 0x1
add tort-s4-a 10.0.0.2
add tort-s4-a 10.0.0.1
create tort-s4-b hash:net family inet hashsize 1024 maxelem 65536 bucketsize 12 initval 0x2
add tort-s4-b 10.1.0.0/16 nomatch
add tort-s4-b 192.0.2.7
add tort-s4-b 10.0.0.0/8
create tort-s6-z hash:ip family inet6 hashsize 1024 maxelem 65536
add tort-s6-z fd00::1
";

    #[test]
    fn backend_setting_is_case_insensitive_and_says_what_is_valid() {
        assert_eq!("NFT".parse(), Ok(BackendSetting::Nft));
        assert_eq!("legacy".parse(), Ok(BackendSetting::Legacy));
        assert_eq!(" Auto ".parse(), Ok(BackendSetting::Auto));
        let err = "iptables".parse::<BackendSetting>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "FELIX_IPTABLESBACKEND=\"iptables\" is not an iptables backend: use Legacy, NFT or Auto"
        );
    }

    #[test]
    fn auto_picks_the_side_with_more_rules_nft_on_a_tie() {
        assert_eq!(choose_backend(3, 2), Backend::Legacy);
        assert_eq!(choose_backend(2, 2), Backend::Nft);
        assert_eq!(choose_backend(0, 0), Backend::Nft);
        assert_eq!(
            count_rules("*filter\n:A - [0:0]\n-A A -j DROP\n-A B -j X\nCOMMIT\n"),
            2
        );
    }

    #[test]
    fn detection_counts_both_families_for_v6_and_survives_a_missing_tool() {
        let fake = Fake::default();
        fake.output("iptables-legacy-save", "-A X -j DROP\n");
        fake.output("ip6tables-legacy-save", "-A X -j DROP\n-A Y -j DROP\n");
        fake.output("iptables-nft-save", "-A X -j DROP\n-A Y -j DROP\n");
        // ip6tables-nft-save fails: counts as nothing.
        let mut runner = fake.clone();
        assert_eq!(
            detect_with(&mut runner, BackendSetting::Auto, Family::V6).unwrap(),
            Backend::Legacy
        );
        assert_eq!(
            detect_with(&mut runner, BackendSetting::Auto, Family::V4).unwrap(),
            Backend::Nft
        );
        assert!(detect_with(&mut Fake::default(), BackendSetting::Auto, Family::V4).is_err());
        assert_eq!(
            detect_with(&mut Fake::default(), BackendSetting::Legacy, Family::V4).unwrap(),
            Backend::Legacy
        );
    }

    #[test]
    fn ipset_save_is_read_for_our_sets_only_and_normalised() {
        let sets = parse_ipset_save(SAVED_SETS);
        assert_eq!(
            sets.keys().collect::<Vec<_>>(),
            ["tort-s4-a", "tort-s4-b", "tort-s6-z"]
        );
        let b = &sets["tort-s4-b"];
        assert_eq!(b.set_type, "hash:net");
        assert_eq!(b.family.as_deref(), Some("inet"));
        assert_eq!(
            b.members,
            BTreeMap::from([
                ("10.0.0.0/8".to_string(), String::new()),
                ("10.1.0.0/16".to_string(), "nomatch".to_string()),
                ("192.0.2.7".to_string(), String::new()),
            ])
        );
    }

    #[test]
    fn members_compare_as_the_kernel_keys_them() {
        let net = Some(SetKind::HashNet);
        assert_eq!(
            normalize_member(net, "192.0.2.7/32"),
            ("192.0.2.7".into(), "".into())
        );
        assert_eq!(
            normalize_member(net, "10.1.2.3/16"),
            ("10.1.0.0/16".into(), "".into())
        );
        assert_eq!(
            normalize_member(net, "fd00:0:0::1/128"),
            ("fd00::1".into(), "".into())
        );
        assert_eq!(
            normalize_member(net, "10.1.0.0/16  nomatch"),
            ("10.1.0.0/16".into(), "nomatch".into())
        );
        assert_eq!(
            normalize_member(Some(SetKind::HashIp), "10.0.0.1/32"),
            ("10.0.0.1".into(), "".into())
        );
        assert_eq!(
            normalize_member(net, "10.1.0.0/16 packets 0 bytes 0 nomatch"),
            ("10.1.0.0/16".into(), "nomatch".into())
        );
        assert_eq!(
            normalize_member(Some(SetKind::HashIpPort), "10.0.0.1,53"),
            ("10.0.0.1,tcp:53".into(), "".into())
        );
        assert_eq!(
            normalize_member(Some(SetKind::HashIpPort), "FD00:0::1,TCP:80"),
            ("fd00::1,tcp:80".into(), "".into())
        );
    }

    #[test]
    fn iptables_save_is_read_for_our_chains_and_hooks() {
        let table = parse_iptables_save(&saved_filter());
        assert_eq!(
            table.chains.keys().collect::<Vec<_>>(),
            ["tort-FORWARD", "tort-pi-x"]
        );
        let fwd = &table.chains["tort-FORWARD"];
        assert_eq!(fwd.tags.len(), 2);
        assert!(
            fwd.tags
                .iter()
                .all(|t| t.as_deref().is_some_and(|t| t.starts_with("tort:")))
        );
        assert_eq!(
            table.chains["tort-pi-x"].sets,
            BTreeSet::from(["tort-s4-a".to_string()])
        );
        // DOCKER is not built in: its jump to our chain is not a hook.
        assert_eq!(
            table.hooks,
            BTreeMap::from([(
                "FORWARD".to_string(),
                vec![HookRule {
                    position: 0,
                    target: "tort-FORWARD".into(),
                    spec: "-m comment --comment \"tort:hook\" -j tort-FORWARD".into(),
                }]
            )])
        );
        let by_hand = parse_iptables_save(
            "*filter\n:FORWARD ACCEPT [0:0]\n:tort-x - [0:0]\n-A FORWARD -i eth0 -j ACCEPT\n\
             -A FORWARD -g tort-x\n-A tort-x -j DROP\nCOMMIT\n",
        );
        assert_eq!(by_hand.chains["tort-x"].tags, vec![None]);
        assert_eq!(by_hand.hooks["FORWARD"][0].position, 1);
    }

    #[test]
    fn words_follow_restore_quoting() {
        assert_eq!(
            split_words(r#"-m comment --comment "a \"b\" c" -j X"#),
            ["-m", "comment", "--comment", "a \"b\" c", "-j", "X"]
        );
    }

    #[test]
    fn an_empty_kernel_gets_everything() {
        let plan = Plan::new(KernelState::default(), &dataplane(), None, Family::V4);
        assert_eq!(
            plan.ipset_before.as_deref(),
            Some(
                "create tort-s4-a hash:ip family inet -exist\n\
                 create tort-s4-b hash:net family inet -exist\n\
                 add tort-s4-a 10.0.0.1 -exist\n\
                 add tort-s4-a 10.0.0.2 -exist\n\
                 add tort-s4-b 10.0.0.0/8 -exist\n\
                 add tort-s4-b 10.1.0.0/16 nomatch -exist\n\
                 add tort-s4-b 192.0.2.7 -exist\n"
            )
        );
        assert_eq!(plan.ipset_after, None);
        assert!(plan.preflush.is_empty());
        let d = dataplane();
        let fwd = &d.chains[&(Table::Filter, "tort-FORWARD".to_string())];
        let pi = &d.chains[&(Table::Filter, "tort-pi-x".to_string())];
        assert_eq!(
            plan.iptables,
            [format!(
                "*filter\n:tort-FORWARD - [0:0]\n:tort-pi-x - [0:0]\n\
                 -A tort-FORWARD -m comment --comment \"{}\" {}\n\
                 -A tort-FORWARD -m comment --comment \"{}\" {}\n\
                 -A tort-pi-x -m comment --comment \"{}\" {}\n\
                 -I FORWARD 1 -m comment --comment \"tort:hook\" -j tort-FORWARD\nCOMMIT\n",
                rule_tag(&fwd[0]),
                fwd[0],
                rule_tag(&fwd[1]),
                fwd[1],
                rule_tag(&pi[0]),
                pi[0],
            )]
        );
        assert_eq!(plan.report.sets_created, ["tort-s4-a", "tort-s4-b"]);
        assert_eq!(plan.report.members_added, 5);
        assert_eq!(plan.report.chains_written.len(), 2);
        assert_eq!(plan.report.hooks_inserted, 1);
        // What it leaves is what the kernel then shows.
        let kernel = KernelState {
            sets: parse_ipset_save(SAVED_SETS),
            tables: BTreeMap::from([(Table::Filter, parse_iptables_save(&saved_filter()))]),
        };
        let again = Plan::new(kernel.clone(), &dataplane(), None, Family::V4);
        assert!(again.report.is_empty(), "{:?}", again.report);
        assert!(again.drift.is_empty(), "{:?}", again.drift);
        assert_eq!(again.after, plan.after_with_foreign(&kernel));
    }

    impl Plan {
        /// `after`, plus the other family's sets a real kernel would also show.
        fn after_with_foreign(&self, kernel: &KernelState) -> KernelState {
            let mut after = self.after.clone();
            for (name, set) in &kernel.sets {
                if set.family.as_deref() != Some("inet") {
                    after.sets.insert(name.clone(), set.clone());
                }
            }
            after
        }
    }

    #[test]
    fn a_change_writes_only_the_difference() {
        let kernel = KernelState {
            sets: parse_ipset_save(SAVED_SETS),
            tables: BTreeMap::from([(Table::Filter, parse_iptables_save(&saved_filter()))]),
        };
        let mut d = dataplane();
        // One member less, one more, one flag flipped; a new set; a chain changes.
        let a = d.ipsets.get_mut("tort-s4-a").unwrap();
        a.members.remove("10.0.0.2");
        a.members.insert("10.0.0.3".into());
        let b = d.ipsets.get_mut("tort-s4-b").unwrap();
        b.members.remove("10.1.0.0/16 nomatch");
        b.members.insert("10.1.0.0/16".into());
        d.ipsets.insert(
            "tort-s4-c".into(),
            set(SetKind::HashIpPort, &["10.0.0.1,tcp:80"]),
        );
        d.chains.insert(
            (Table::Filter, "tort-pi-x".into()),
            vec!["-j RETURN".into()],
        );
        let plan = Plan::new(kernel.clone(), &d, None, Family::V4);
        assert_eq!(
            plan.ipset_before.as_deref(),
            Some(
                "create tort-s4-c hash:ip,port family inet -exist\n\
                 del tort-s4-a 10.0.0.2 -exist\n\
                 add tort-s4-a 10.0.0.3 -exist\n\
                 add tort-s4-b 10.1.0.0/16 -exist\n\
                 add tort-s4-c 10.0.0.1,tcp:80 -exist\n"
            )
        );
        assert_eq!(
            plan.iptables,
            [format!(
                "*filter\n:tort-pi-x - [0:0]\n-A tort-pi-x -m comment --comment \"{}\" -j RETURN\nCOMMIT\n",
                rule_tag("-j RETURN")
            )]
        );
        assert_eq!(plan.report.sets_created, ["tort-s4-c"]);
        assert_eq!(plan.report.sets_updated, ["tort-s4-a", "tort-s4-b"]);
        assert_eq!(plan.report.members_added, 3);
        assert_eq!(plan.report.members_removed, 1);
        assert_eq!(
            plan.report.chains_written,
            [(Table::Filter, "tort-pi-x".to_string())]
        );
    }

    #[test]
    fn unwanted_chains_hooks_and_sets_go_last_and_only_our_family() {
        let kernel = KernelState {
            sets: parse_ipset_save(SAVED_SETS),
            tables: BTreeMap::from([(Table::Filter, parse_iptables_save(&saved_filter()))]),
        };
        let empty = Dataplane {
            family: Some(Family::V4),
            ..Dataplane::default()
        };
        let plan = Plan::new(kernel.clone(), &empty, None, Family::V4);
        assert_eq!(plan.ipset_before, None);
        assert_eq!(
            plan.iptables,
            ["*filter\n:tort-FORWARD - [0:0]\n:tort-pi-x - [0:0]\n\
              -D FORWARD -m comment --comment \"tort:hook\" -j tort-FORWARD\n\
              -X tort-FORWARD\n-X tort-pi-x\nCOMMIT\n"]
        );
        // tort-s6-z is the V6 applier's; `other` is nobody's business.
        assert_eq!(
            plan.ipset_after.as_deref(),
            Some("destroy tort-s4-a\ndestroy tort-s4-b\n")
        );
        assert!(plan.after.sets.contains_key("tort-s6-z"));
        assert_eq!(plan.report.hooks_removed, 1);
        assert_eq!(plan.report.chains_removed.len(), 2);
    }

    #[test]
    fn drift_is_described_and_repaired() {
        let mut saved = saved_filter().replace(
            "-A FORWARD -m comment --comment \"tort:hook\" -j tort-FORWARD\n",
            "",
        );
        saved = saved.replace("COMMIT", "-A tort-pi-x -j ACCEPT\nCOMMIT");
        let sets = SAVED_SETS
            .replace("create tort-s4-a hash:ip", "create tort-s4-a hash:net")
            .replace("add tort-s4-b 192.0.2.7\n", "add tort-s4-b 10.6.6.6\n");
        let kernel = KernelState {
            sets: parse_ipset_save(&sets),
            tables: BTreeMap::from([(Table::Filter, parse_iptables_save(&saved))]),
        };
        let plan = Plan::new(kernel.clone(), &dataplane(), None, Family::V4);
        assert_eq!(
            plan.drift,
            [
                "ipset tort-s4-a is hash:net family inet, want hash:ip family inet",
                "ipset tort-s4-b has extra member 10.6.6.6",
                "ipset tort-s4-b lacks member 192.0.2.7",
                "filter chain tort-pi-x differs: 2 rules, want 1; rule 2 is a rule without a tort: comment, want no rule",
                "filter hook FORWARD -> tort-FORWARD is missing",
            ]
        );
        // tort-pi-x uses the set that is recreated: it lets go first, then is rewritten.
        assert_eq!(plan.preflush, ["*filter\n:tort-pi-x - [0:0]\nCOMMIT\n"]);
        assert_eq!(
            plan.ipset_before.as_deref(),
            Some(
                "destroy tort-s4-a\n\
                 create tort-s4-a hash:ip family inet -exist\n\
                 del tort-s4-b 10.6.6.6 -exist\n\
                 add tort-s4-a 10.0.0.1 -exist\n\
                 add tort-s4-a 10.0.0.2 -exist\n\
                 add tort-s4-b 192.0.2.7 -exist\n"
            )
        );
        assert_eq!(plan.iptables.len(), 1);
        assert!(plan.iptables[0].starts_with("*filter\n:tort-pi-x - [0:0]\n-A tort-pi-x "));
        assert!(plan.iptables[0].ends_with(
            "-I FORWARD 1 -m comment --comment \"tort:hook\" -j tort-FORWARD\nCOMMIT\n"
        ));
    }

    #[test]
    fn a_hook_that_is_not_first_is_moved_to_the_top() {
        let saved = "*filter\n:FORWARD ACCEPT [0:0]\n:tort-FORWARD - [0:0]\n\
                     -A FORWARD -j DOCKER-USER\n-A FORWARD -j tort-FORWARD\nCOMMIT\n";
        let kernel = KernelState {
            sets: BTreeMap::new(),
            tables: BTreeMap::from([(Table::Filter, parse_iptables_save(saved))]),
        };
        let mut d = Dataplane::default();
        d.chains
            .insert((Table::Filter, "tort-FORWARD".into()), vec![]);
        d.hooks.push(Hook {
            table: Table::Filter,
            builtin: "FORWARD".into(),
            chain: "tort-FORWARD".into(),
        });
        let plan = Plan::new(kernel.clone(), &d, None, Family::V4);
        assert_eq!(
            plan.drift,
            ["filter hook FORWARD -> tort-FORWARD is rule 2 of FORWARD, want 1"]
        );
        assert_eq!(
            plan.iptables,
            ["*filter\n-D FORWARD -j tort-FORWARD\n\
              -I FORWARD 1 -m comment --comment \"tort:hook\" -j tort-FORWARD\nCOMMIT\n"]
        );
    }

    #[test]
    fn a_failed_restore_names_the_input_line() {
        let input = "*filter\n:tort-x - [0:0]\n-A tort-x -j NOPE\nCOMMIT\n";
        assert_eq!(
            failed_line(
                "iptables-nft-restore: line 3 failed: No chain/target/match",
                input
            ),
            Some((3, "-A tort-x -j NOPE".into()))
        );
        assert_eq!(
            failed_line(
                "Couldn't load target `NOPE'\n\nError occurred at line: 3",
                input
            ),
            Some((3, "-A tort-x -j NOPE".into()))
        );
        assert_eq!(
            failed_line("ipset v7.17: Error in line 2: Syntax error", input),
            Some((2, ":tort-x - [0:0]".into()))
        );
        assert_eq!(failed_line("no numbers here", input), None);
        let err = ApplyError::Failed {
            command: "ipset restore".into(),
            status: "exit status: 1".into(),
            stderr: "ipset v7.17: Error in line 2: Syntax error".into(),
            input_line: Some((2, "add x y".into())),
        };
        assert_eq!(
            err.to_string(),
            "`ipset restore` failed (exit status: 1): ipset v7.17: Error in line 2: Syntax error (input line 2: add x y)"
        );
    }

    #[test]
    fn the_dataplane_may_name_only_our_chains_and_sets() {
        let mut applier = Applier::with_runner(Family::V4, Backend::Nft, Box::new(Fake::default()));
        let mut d = dataplane();
        d.chains.insert((Table::Filter, "FORWARD".into()), vec![]);
        assert!(matches!(applier.apply(d), Err(ApplyError::NotOurs { .. })));
        let v6 = Dataplane {
            family: Some(Family::V6),
            ..Dataplane::default()
        };
        assert!(matches!(
            applier.apply(v6),
            Err(ApplyError::FamilyMismatch { .. })
        ));
    }

    /// A command line and its stdin.
    type Call = (String, Option<String>);

    /// Answers save commands from a table and records every restore.
    #[derive(Clone, Default)]
    struct Fake {
        outputs: Arc<Mutex<BTreeMap<String, String>>>,
        calls: Arc<Mutex<Vec<Call>>>,
        fail: Arc<Mutex<Option<String>>>,
    }

    impl Fake {
        fn output(&self, command: &str, out: &str) {
            self.outputs
                .lock()
                .unwrap()
                .insert(command.into(), out.into());
        }
        fn take_calls(&self) -> Vec<Call> {
            std::mem::take(&mut *self.calls.lock().unwrap())
        }
    }

    impl Runner for Fake {
        fn run(
            &mut self,
            program: &str,
            args: &[&str],
            stdin: Option<&str>,
        ) -> Result<String, ApplyError> {
            let command = command_line(program, args);
            self.calls
                .lock()
                .unwrap()
                .push((command.clone(), stdin.map(str::to_owned)));
            if self.fail.lock().unwrap().as_deref() == Some(command.as_str()) {
                return Err(ApplyError::Failed {
                    command,
                    status: "exit status: 1".into(),
                    stderr: "boom".into(),
                    input_line: None,
                });
            }
            let out = self.outputs.lock().unwrap().get(&command).cloned();
            out.ok_or_else(|| ApplyError::Spawn {
                program: program.into(),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            })
            .or_else(|e| {
                if stdin.is_some() {
                    Ok(String::new())
                } else {
                    Err(e)
                }
            })
        }
    }

    fn commands(calls: &[Call]) -> Vec<&str> {
        calls.iter().map(|(c, _)| c.as_str()).collect()
    }

    #[test]
    fn the_applier_reads_once_then_writes_only_changes_and_rereads_after_a_failure() {
        let fake = Fake::default();
        fake.output("ipset save", "");
        fake.output(
            "iptables-nft-save -t filter",
            "*filter\n:FORWARD ACCEPT [0:0]\nCOMMIT\n",
        );
        fake.output(
            "iptables-nft-save -t nat",
            "*nat\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n",
        );
        let mut applier = Applier::with_runner(Family::V4, Backend::Nft, Box::new(fake.clone()));
        let report = applier.apply(dataplane()).unwrap();
        assert_eq!(report.chains_written.len(), 2);
        assert_eq!(
            commands(&fake.take_calls()),
            [
                "ipset save",
                "iptables-nft-save -t filter",
                "iptables-nft-save -t nat",
                "ipset restore",
                "iptables-nft-restore --noflush -w 10",
            ]
        );
        // Steady state: nothing runs at all.
        let report = applier.apply(dataplane()).unwrap();
        assert!(report.is_empty());
        assert!(fake.take_calls().is_empty());
        // A change writes only its chain, without reading.
        let mut d = dataplane();
        d.chains.insert(
            (Table::Filter, "tort-pi-x".into()),
            vec!["-j RETURN".into()],
        );
        let report = applier.apply(d).unwrap();
        assert_eq!(
            report.to_string(),
            "sets: 0 created, 0 updated (+0 -0 members), 0 destroyed; chains: 1 written, 0 removed; hooks: 0 inserted, 0 removed"
        );
        let calls = fake.take_calls();
        assert_eq!(commands(&calls), ["iptables-nft-restore --noflush -w 10"]);
        // A failed write makes the next apply read the kernel again.
        *fake.fail.lock().unwrap() = Some("iptables-nft-restore --noflush -w 10".into());
        assert!(applier.apply(dataplane()).is_err());
        fake.take_calls();
        *fake.fail.lock().unwrap() = None;
        applier.apply(dataplane()).unwrap();
        assert_eq!(fake.take_calls()[0].0, "ipset save");
    }
}
