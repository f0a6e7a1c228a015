use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::*;

/// Builds a view over split rows (what table.rs does after decoding).
fn join<T: for<'a> Deserialize<'a>>(rows: &[RowBuf], proj: &Projection) -> Result<T, DeError> {
    let mut nums = Vec::new();
    let mut num_off = vec![0u32];
    for r in rows {
        nums.extend_from_slice(&r.nums);
        num_off.push(nums.len() as u32);
    }
    let infos: Vec<ShapeInfo> = rows.iter().map(|r| shape_info(&r.shape).unwrap()).collect();
    // Subtree ends, the same way table.rs computes them.
    let mut end = vec![0u32; rows.len()];
    let mut stack: Vec<(usize, u64)> = Vec::new();
    for r in 0..rows.len() {
        if let Some(t) = stack.last_mut() {
            assert!(t.1 > 0, "row {r} has no parent");
            t.1 -= 1;
        }
        let mut c = infos[r].fixed_children as u64;
        for &i in &infos[r].rows_counts {
            c += rows[r].nums[i as usize];
        }
        stack.push((r, c));
        while let Some(&(t, 0)) = stack.last() {
            end[t] = r as u32 + 1;
            stack.pop();
        }
    }
    assert!(stack.is_empty());
    let view = RowsView {
        shapes: rows.iter().map(|r| r.shape.as_slice()).collect(),
        nums: &nums,
        num_off: &num_off,
        subtree_end: &end,
    };
    decode_value(&view, proj)
}

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone, Default)]
struct Port {
    name: String,
    state: u8,
    learning: Option<bool>,
    vlans: Vec<Vlan>,
}

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone, Default)]
struct Vlan {
    vid: u16,
}

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
enum Verdict {
    Ok,
    Lost(u32),
    Late { ms: f64, why: String },
    Pair(i8, char),
}

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone, Default)]
struct Doc {
    seq: u64,
    host: String,
    delta: i64,
    load: f64,
    ratio: f32,
    ports: Option<Vec<Port>>,
    counters: Option<BTreeMap<String, i64>>,
    cpus: Vec<u64>,
    thresh: Option<[u32; 3]>,
    verdicts: Vec<Verdict>,
    #[serde(default)]
    by_num: BTreeMap<u32, String>,
    nothing: Option<Vlan>,
    unit: (),
    raw: serde_bytes_like::Bytes,
    #[serde(default)]
    later: Option<Vec<Port>>,
}

mod serde_bytes_like {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    #[derive(Debug, PartialEq, Clone, Default)]
    pub struct Bytes(pub Vec<u8>);
    impl Serialize for Bytes {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(&self.0)
        }
    }
    impl<'de> Deserialize<'de> for Bytes {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> serde::de::Visitor<'de> for V {
                type Value = Bytes;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("bytes")
                }
                fn visit_bytes<E>(self, v: &[u8]) -> Result<Bytes, E> {
                    Ok(Bytes(v.to_vec()))
                }
            }
            d.deserialize_bytes(V)
        }
    }
}

fn doc() -> Doc {
    Doc {
        seq: 7,
        host: "node1".into(),
        delta: -42,
        load: 0.25,
        ratio: 1.5,
        ports: Some(vec![
            Port {
                name: "tap1".into(),
                state: 3,
                learning: Some(true),
                vlans: vec![Vlan { vid: 10 }, Vlan { vid: 20 }],
            },
            Port {
                name: "tap2".into(),
                state: 0,
                learning: None,
                vlans: vec![],
            },
            Port {
                name: "bond0".into(),
                state: 3,
                ..Default::default()
            },
        ]),
        counters: Some(
            (0..200)
                .map(|i| (format!("Ip.C{i}"), i * 3 - 100))
                .collect(),
        ),
        cpus: vec![1, 2, 3],
        thresh: Some([128, 512, 1024]),
        verdicts: vec![
            Verdict::Ok,
            Verdict::Lost(3),
            Verdict::Late {
                ms: 2.5,
                why: "queue".into(),
            },
            Verdict::Pair(-1, 'x'),
        ],
        by_num: [(1, "a".to_string()), (300, "b".to_string())].into(),
        nothing: None,
        unit: (),
        raw: serde_bytes_like::Bytes(vec![0, 255, 7]),
        later: None,
    }
}

#[test]
fn round_trips_every_kind_of_value() {
    let d = doc();
    let mut sp = Splitter::new();
    let rows = sp.split(&d).unwrap().to_vec();
    let back: Doc = join(&rows, &Projection::all()).unwrap();
    assert_eq!(back, d);
    // Rows: the root, three ports, two VLAN rows of the first port, the
    // counters and by_num maps (compound values of root fields).
    assert_eq!(rows.len(), 1 + 3 + 2 + 2, "{rows:#?}");
    assert_eq!(rows[1].nums.len(), 2, "state and the (empty) vlans count");
}

#[test]
fn shapes_hold_structure_numbers_hold_values() {
    let mut a = doc();
    let mut sp = Splitter::new();
    let ra = sp.split(&a).unwrap().to_vec();
    a.seq += 1;
    a.ports.as_mut().unwrap()[1].state = 1;
    a.counters.as_mut().unwrap().insert("Ip.C5".into(), 999);
    let rb = sp.split(&a).unwrap().to_vec();
    assert_eq!(ra.len(), rb.len());
    for (x, y) in ra.iter().zip(&rb) {
        assert_eq!(x.shape, y.shape, "only numbers changed");
    }
    assert_ne!(ra[0].nums, rb[0].nums);
    // A changed string changes only its own row's shape.
    a.ports.as_mut().unwrap()[1].name = "tap9".into();
    let rc = sp.split(&a).unwrap().to_vec();
    let changed: Vec<usize> = (0..rc.len())
        .filter(|&i| rc[i].shape != rb[i].shape)
        .collect();
    assert_eq!(changed, vec![4]);
}

#[test]
fn large_counts_are_patched() {
    let d = Doc {
        cpus: (0..1000).collect(),
        counters: Some((0..300).map(|i| (format!("k{i}"), i)).collect()),
        ..doc()
    };
    let mut sp = Splitter::new();
    let rows = sp.split(&d).unwrap().to_vec();
    let back: Doc = join(&rows, &Projection::all()).unwrap();
    assert_eq!(back, d);
}

#[test]
fn projection_leaves_out_sections_and_selects_rows() {
    let d = doc();
    let mut sp = Splitter::new();
    let rows = sp.split(&d).unwrap().to_vec();
    let proj = Projection {
        fields: Some(["ports".to_string()].into()),
        select: Some(Select {
            seq: "ports".into(),
            field: "name".into(),
            values: ["tap2".to_string()].into(),
        }),
    };
    let back: Doc = join(&rows, &proj).unwrap();
    assert_eq!(back.counters, None, "not asked for: left out");
    assert_eq!(back.ports.as_ref().unwrap().len(), 1);
    assert_eq!(back.ports.unwrap()[0].name, "tap2");
    assert_eq!(
        (back.seq, back.host.as_str(), back.cpus.len()),
        (7, "node1", 3),
        "inline fields stay"
    );
}

#[test]
fn older_and_newer_types_read_each_other() {
    // A reader with fewer fields skips the rest (with their child rows);
    // one with more gets its defaults.
    #[derive(Deserialize, Debug)]
    struct Old {
        seq: u64,
        counters: Option<BTreeMap<String, i64>>,
        verdicts: Vec<Verdict>,
    }
    let d = doc();
    let mut sp = Splitter::new();
    let rows = sp.split(&d).unwrap().to_vec();
    let o: Old = join(&rows, &Projection::all()).unwrap();
    assert_eq!(o.seq, 7);
    assert_eq!(o.counters, d.counters);
    assert_eq!(o.verdicts, d.verdicts);

    #[derive(Serialize)]
    struct Older {
        seq: u64,
        host: String,
        delta: i64,
        load: f64,
        ratio: f32,
        cpus: Vec<u64>,
        verdicts: Vec<Verdict>,
        by_num: BTreeMap<u32, String>,
        unit: (),
        raw: serde_bytes_like::Bytes,
    }
    let rows = sp
        .split(&Older {
            seq: 1,
            host: "h".into(),
            delta: 0,
            load: 0.0,
            ratio: 0.0,
            cpus: vec![],
            verdicts: vec![],
            by_num: BTreeMap::new(),
            unit: (),
            raw: serde_bytes_like::Bytes(vec![]),
        })
        .unwrap()
        .to_vec();
    let n: Doc = join(&rows, &Projection::all()).unwrap();
    assert_eq!((n.seq, n.ports, n.later), (1, None, None));
}

#[test]
fn shape_info_counts_and_rejects_garbage() {
    let mut sp = Splitter::new();
    let rows = sp.split(&doc()).unwrap().to_vec();
    let root = shape_info(&rows[0].shape).unwrap();
    assert_eq!(root.nums as usize, rows[0].nums.len());
    assert_eq!(root.fixed_children, 2, "the counters and by_num maps");
    assert_eq!(root.rows_counts.len(), 1, "the ports");
    assert!(shape_info(&[0x77]).is_err());
    assert!(shape_info(&[OP_STR, 5, b'a']).is_err());
    assert!(shape_info(&[OP_TRUE, OP_TRUE]).is_err());
    assert_eq!(field_str(&rows[1].shape, "name"), Some("tap1"));
    assert_eq!(field_str(&rows[1].shape, "nope"), None);
}

#[test]
fn hand_written_varints_match_the_crate() {
    use integer_encoding::VarInt;
    for v in [
        0u64,
        1,
        127,
        128,
        300,
        16_383,
        16_384,
        u32::MAX as u64,
        u64::MAX / 3,
        u64::MAX,
    ] {
        let mut a = Vec::new();
        put_varint(&mut a, v);
        assert_eq!(a, v.encode_var_vec(), "{v}");
        let mut p = 0;
        assert_eq!(get_varint(&a, &mut p), Some(v));
        assert_eq!(p, a.len());
    }
    for v in [0i64, -1, 1, -64, 64, i32::MIN as i64, i64::MIN, i64::MAX] {
        let mut a = Vec::new();
        put_zigzag(&mut a, v);
        assert_eq!(a, v.encode_var_vec(), "{v}");
    }
}
