//! Decoding a burst of full UPDATEs: what a speaker does when a peer sends it a table.
//! `cargo bench -p tortie-bgp --bench decode`.

use std::net::Ipv4Addr;

use bytes::BytesMut;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ipnet::{IpNet, Ipv4Net};
use tortie_bgp::wire::{
    AsPath, Codec, Message, Origin, PathAttributes, decode_frame, pack_announce,
};

/// 100k distinct /30s with one set of attributes, packed the way a feeder sends them.
fn burst(prefixes: u32) -> Vec<u8> {
    let attrs = PathAttributes {
        origin: Some(Origin::Igp),
        as_path: Some(AsPath::sequence([65001])),
        next_hop: Some(Ipv4Addr::new(10, 0, 0, 2)),
        local_pref: Some(100),
        ..PathAttributes::default()
    };
    let nets: Vec<IpNet> = (0..prefixes)
        .filter_map(|i| Ipv4Net::new(Ipv4Addr::from(0x0a00_0000 + (i << 2)), 30).ok())
        .map(IpNet::V4)
        .collect();
    let mut out = BytesMut::new();
    let codec = Codec {
        four_octet_as: true,
        external: false,
    };
    if let Err(e) = pack_announce(&attrs, &nets, &codec, &mut out) {
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
    let bytes = burst(N);
    let codec = Codec {
        four_octet_as: true,
        external: false,
    };
    assert_eq!(decode_all(&bytes, &codec), N as usize);
    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Elements(u64::from(N)));
    group.bench_function("update burst, 100k /30 prefixes", |b| {
        b.iter(|| decode_all(&bytes, &codec))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
