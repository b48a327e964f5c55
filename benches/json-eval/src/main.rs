//! simd-json and sonic-rs against serde_json on aq1 lines (issue 18): each parses every line
//! into the same struct (the keys aq1 declares; the others skipped); ns per line, median of 7.
use std::io::Read;
use std::time::Instant;

#[derive(serde::Deserialize)]
#[allow(dead_code)]
struct Line<'a> {
    #[serde(borrow)]
    device: std::borrow::Cow<'a, str>,
    ts: i64,
    pm25: f64,
    co2: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let path = std::env::args().nth(1).expect("an aq1 file");
    let mut text = Vec::new();
    std::fs::File::open(path).unwrap().take(120_000_000).read_to_end(&mut text).unwrap();
    let mut lines: Vec<&[u8]> = text.split(|&b| b == b'\n').filter(|l| !l.is_empty()).collect();
    lines.pop();
    lines.truncate(1_000_000);
    let time = |name: &str, f: &mut dyn FnMut() -> u64| {
        let mut v = Vec::new();
        for _ in 0..7 {
            let t = Instant::now();
            std::hint::black_box(f());
            v.push(t.elapsed().as_secs_f64() * 1e9 / lines.len() as f64);
        }
        let ns = median(v);
        println!("| {name} | {ns:.1} |");
        ns
    };
    println!("| parser (into the same struct) | ns per line |\n| --- | ---: |");
    let base = time("serde_json::from_slice", &mut || {
        lines.iter().map(|l| serde_json::from_slice::<Line>(l).unwrap().ts as u64 & 1).sum()
    });
    let sonic = time("sonic_rs::from_slice", &mut || {
        lines.iter().map(|l| sonic_rs::from_slice::<Line>(l).unwrap().ts as u64 & 1).sum()
    });
    let mut scratch = Vec::with_capacity(256);
    let simd = time("simd_json::serde::from_slice (line copied: it parses in place)", &mut || {
        let mut n = 0;
        for l in &lines {
            scratch.clear();
            scratch.extend_from_slice(l);
            n += simd_json::serde::from_slice::<Line>(&mut scratch).unwrap().ts as u64 & 1;
        }
        n
    });
    println!("\nsonic-rs / serde_json: {:.2}; simd-json / serde_json: {:.2}", sonic / base, simd / base);
}
