//! A full table from one peer: how fast it reaches the Loc-RIB subscriber and how much
//! memory the speaker holds per route (root; runs in its own network namespace).
//!
//! `TORTIE_BGP_SCALE_PREFIXES` sets the table size (default 500000). Run it optimised for
//! meaningful timings:
//! `cargo test -p tortie-bgp --release --test scale -- --nocapture`

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use ipnet::{IpNet, Ipv4Net};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;
use tortie_bgp::wire::{
    self, AsPath, Capability, Codec, Family, Message, Open, Origin, PathAttributes,
};
use tortie_bgp::{PeerConfig, RibEvent, RouteChange, Speaker, SpeakerConfig, State};

const PORT: u16 = 1790;
const ASN: u32 = 64512;

struct Netns(String);

impl Netns {
    fn new() -> Netns {
        let name = format!("tbgp-scale-{}", std::process::id());
        run_ip(&["netns", "add", &name]);
        let ns = Netns(name);
        run_ip(&["-n", &ns.0, "link", "set", "lo", "up"]);
        ns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn run_ip(args: &[&str]) {
    let ok = Command::new("ip")
        .args(args)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "ip {args:?} failed");
}

fn rss_bytes() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
        .map_or(0, |kb| kb * 1024)
}

#[test]
fn a_full_table_from_one_peer() {
    let count: usize = std::env::var("TORTIE_BGP_SCALE_PREFIXES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500_000);
    let ns = Netns::new();
    let path = format!("/run/netns/{}", ns.0);
    let thread = std::thread::spawn(move || {
        let file = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .unwrap_or_else(|e| panic!("setns: {e}"));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("runtime: {e}"));
        // Worker threads are created inside the namespace (they inherit it from here).
        rt.block_on(feed(count));
    });
    if let Err(panic) = thread.join() {
        std::panic::resume_unwind(panic);
    }
}

async fn feed(count: usize) {
    let lo = |n: u8| IpAddr::V4(Ipv4Addr::new(127, 0, 0, n));
    let mut cfg = SpeakerConfig::new(Ipv4Addr::new(10, 0, 0, 1), ASN);
    cfg.listen = Some(SocketAddr::new(lo(1), PORT));
    let speaker = Speaker::start(cfg).await.unwrap_or_else(|e| panic!("{e}"));
    let mut peer = PeerConfig::new(lo(3), ASN);
    peer.passive = true;
    speaker
        .add_peer(peer)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut rx = speaker.subscribe().await.unwrap_or_else(|e| panic!("{e}"));

    // The table, encoded up front so that encoding is not part of the measurement.
    let attrs = PathAttributes {
        origin: Some(Origin::Igp),
        as_path: Some(AsPath::default()),
        next_hop: Some(Ipv4Addr::new(127, 0, 0, 3)),
        local_pref: Some(100),
        ..Default::default()
    };
    let prefixes: Vec<IpNet> = (0..count as u32)
        .map(|i| {
            IpNet::V4(Ipv4Net::new(Ipv4Addr::from(0x0a00_0000 + i * 4), 30).unwrap_or_default())
        })
        .collect();
    let codec = Codec {
        four_octet_as: true,
        external: false,
    };
    let mut table = BytesMut::new();
    let messages = wire::pack_announce(&attrs, &prefixes, &codec, &mut table)
        .unwrap_or_else(|e| panic!("{e}"));
    drop(prefixes);

    let socket = TcpSocket::new_v4().unwrap_or_else(|e| panic!("{e}"));
    socket
        .bind(SocketAddr::new(lo(3), 0))
        .unwrap_or_else(|e| panic!("{e}"));
    let stream = socket
        .connect(SocketAddr::new(lo(1), PORT))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let (mut rd, mut wr) = stream.into_split();
    let open = Message::Open(Open {
        version: 4,
        my_as: ASN,
        hold_time: 90,
        bgp_id: Ipv4Addr::new(10, 0, 0, 3),
        capabilities: vec![
            Capability::Multiprotocol(Family::IPV4_UNICAST),
            Capability::FourOctetAs(ASN),
        ],
    });
    let hello = [open, Message::Keepalive]
        .iter()
        .flat_map(|m| wire::encode(m, &Codec::default()).unwrap_or_default())
        .collect::<Vec<u8>>();
    wr.write_all(&hello).await.unwrap_or_else(|e| panic!("{e}"));
    // Keep reading what the speaker sends so that its writes never block.
    tokio::spawn(async move {
        let mut sink = vec![0u8; 65536];
        while rd.read(&mut sink).await.is_ok_and(|n| n > 0) {}
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = speaker.peer_status().await.unwrap_or_default();
        if status
            .first()
            .is_some_and(|p| p.state == State::Established)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "feeder never established: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Settle the baseline: the subscription's empty snapshot.
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {}

    let before = rss_bytes();
    let start = Instant::now();
    let writer = tokio::spawn(async move {
        wr.write_all(&table).await.unwrap_or_else(|e| panic!("{e}"));
        wr
    });
    let mut added = 0usize;
    let deadline = Instant::now() + Duration::from_secs(600);
    while added < count {
        let ev = tokio::time::timeout_at(deadline.into(), rx.recv()).await;
        match ev {
            Ok(Some(RibEvent::Changes(changes))) => {
                added += changes
                    .iter()
                    .filter(|c| matches!(c, RouteChange::Add { .. }))
                    .count();
            }
            // A subscriber that fell behind gets the whole table.
            Ok(Some(RibEvent::Resync(table))) => added = table.len(),
            Ok(Some(RibEvent::InitialSyncDone)) => {}
            Ok(None) => panic!("subscription closed after {added} routes"),
            Err(_) => panic!("only {added} of {count} routes arrived"),
        }
    }
    let elapsed = start.elapsed();
    let _wr = writer.await;
    // Let transient buffers go before measuring what the speaker keeps.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = rss_bytes();
    let status = speaker.peer_status().await.unwrap_or_default();
    assert_eq!(status.first().map(|p| p.prefixes_accepted), Some(count));
    let per_route = after.saturating_sub(before) as f64 / count as f64;
    println!(
        "{count} prefixes in {messages} UPDATEs: {:.2} s, {:.0} routes/s, RSS +{} KiB ({per_route:.0} bytes/route)",
        elapsed.as_secs_f64(),
        count as f64 / elapsed.as_secs_f64(),
        after.saturating_sub(before) / 1024,
    );
    assert!(
        per_route <= 100.0,
        "{per_route:.0} bytes per route is over the 100-byte budget"
    );
    let _ = speaker.shutdown().await;
}
