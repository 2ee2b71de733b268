//! Decoding a burst of full UPDATEs (what a speaker does when a peer sends it a table) and
//! packing one (what it does to send a table). `cargo bench -p tortie-bgp --bench decode`.
//! On the 2-core lab VM: about 1 ms to decode 100k /30s, 1.7 ms to pack them.

use std::net::Ipv4Addr;

use bytes::BytesMut;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ipnet::{IpNet, Ipv4Net};
use tortie_bgp::wire::{
    AsPath, Codec, Message, Origin, PathAttributes, decode_frame, pack_announce,
};

fn attrs() -> PathAttributes {
    PathAttributes {
        origin: Some(Origin::Igp),
        as_path: Some(AsPath::sequence([65001])),
        next_hop: Some(Ipv4Addr::new(10, 0, 0, 2)),
        local_pref: Some(100),
        ..PathAttributes::default()
    }
}

/// `n` distinct /30s, as a feeder announces them.
fn prefixes(n: u32) -> Vec<IpNet> {
    (0..n)
        .filter_map(|i| Ipv4Net::new(Ipv4Addr::from(0x0a00_0000 + (i << 2)), 30).ok())
        .map(IpNet::V4)
        .collect()
}

/// The prefixes with one set of attributes, packed the way a feeder sends them.
fn burst(prefixes: &[IpNet], codec: &Codec) -> Vec<u8> {
    let mut out = BytesMut::new();
    if let Err(e) = pack_announce(&attrs(), prefixes, codec, &mut out) {
        panic!("packing the burst: {e}");
    }
    out.to_vec()
}

fn decode_all(bytes: &[u8], codec: &Codec) -> usize {
    let mut at = 0;
    let mut prefixes = 0;
    while let Ok(Some((m, used))) = decode_frame(bytes.get(at..).unwrap_or_default(), codec) {
        if let Message::Update(u) = m {
            prefixes += u.nlri.len();
        }
        at += used;
    }
    prefixes
}

fn bench(c: &mut Criterion) {
    const N: u32 = 100_000;
    let codec = Codec {
        four_octet_as: true,
        external: false,
    };
    let nets = prefixes(N);
    let bytes = burst(&nets, &codec);
    assert_eq!(decode_all(&bytes, &codec), N as usize);
    let mut group = c.benchmark_group("wire");
    group.throughput(Throughput::Elements(u64::from(N)));
    group.bench_function("decode an UPDATE burst of 100k /30s", |b| {
        b.iter(|| decode_all(&bytes, &codec))
    });
    group.bench_function("pack 100k /30s into UPDATEs", |b| {
        b.iter(|| burst(&nets, &codec).len())
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
