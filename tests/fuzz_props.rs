//! Fast, deterministic versions of the fuzz targets in `fuzz/`: the same drivers
//! and invariants (`fuzz/src/lib.rs`, included by path), run on every transcript
//! under `tests/transcripts/` and on a fixed-seed stream of mutations of them, so
//! plain `cargo test` checks in seconds what `fuzz/run.sh` explores for longer:
//! no panic, buffering within `max_line` plus one read, pipelined bytes a suffix
//! of the input, and the same events whether input comes whole, byte by byte or
//! in arbitrary chunks.

#[path = "../fuzz/src/lib.rs"]
mod harness;

use std::fs;
use std::path::{Path, PathBuf};

/// xorshift64*: a fixed seed makes every run check the same inputs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Fragments that steer parsers into their interesting corners.
const TOKENS: &[&[u8]] = &[
    b"\r\n",
    b"\n",
    b"\r",
    b"\0",
    b" ",
    b"{5}\r\n",
    b"{3+}\r\n",
    b"{99999}\r\n",
    b"\"",
    b"*",
    b"=",
    b"AUTH PLAIN",
    b"AUTH LOGIN",
    b"a AUTHENTICATE PLAIN ",
    b"a LOGIN a b",
    b"USER a",
    b"PASS b",
    b"STLS",
    b"STARTTLS",
    b"a STARTTLS",
    b"BDAT 10",
    b"BDAT 5 LAST",
    b"EHLO x",
    b"QUIT",
    b"AGFsaWNlAHNlY3JldA==",
    b"YWxpY2U=",
    b"+OK",
    b"-ERR",
    b"250-",
    b"250 ",
    b"334 ",
    b"235 ",
    b"* OK ",
    b"a1 OK ",
    b"p1 OK",
    b"+ ",
    b".\r\n",
];

/// One mutation of `input` (flags and split bytes are re-drawn).
fn mutate(rng: &mut Rng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut payload = input.get(2..).unwrap_or_default().to_vec();
    for _ in 0..=rng.below(4) {
        let at = rng.below(payload.len() + 1);
        match rng.below(6) {
            0 => payload.truncate(at),
            1 if !payload.is_empty() => {
                let i = rng.below(payload.len());
                payload[i] = rng.next() as u8;
            }
            2 => {
                let token = TOKENS[rng.below(TOKENS.len())];
                payload.splice(at..at, token.iter().copied());
            }
            3 => {
                let run = vec![b"xA\n\r"[rng.below(4)]; rng.below(3000)];
                payload.splice(at..at, run);
            }
            4 => {
                let from = rng.below(other.len() + 1);
                payload.splice(at..at, other[from..].iter().copied());
            }
            _ => payload
                .drain(at..(at + rng.below(8)).min(payload.len()))
                .for_each(drop),
        }
    }
    payload.truncate(4096);
    let splits = rng.below(8);
    let mut out = vec![rng.next() as u8, splits as u8];
    out.extend((0..splits).map(|_| rng.next() as u8 % 16));
    out.extend(payload);
    out
}

fn transcripts(protocol: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/transcripts")
        .join(protocol);
    let mut out: Vec<(String, Vec<u8>)> = fs::read_dir(&dir)
        .unwrap()
        .map(|entry| {
            let path = entry.unwrap().path();
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            (
                name,
                harness::transcript_input(&fs::read_to_string(&path).unwrap()),
            )
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no transcripts in {}", dir.display());
    out
}

fn explore(seeds: &[Vec<u8>], rounds: usize, seed: u64, target: fn(&[u8])) {
    let check = |input: &[u8]| {
        if std::panic::catch_unwind(|| target(input)).is_err() {
            panic!("failing input: b\"{}\"", input.escape_ascii());
        }
    };
    seeds.iter().for_each(|input| check(input));
    let mut rng = Rng(seed);
    for _ in 0..rounds {
        let a = &seeds[rng.below(seeds.len())];
        let b = &seeds[rng.below(seeds.len())];
        check(&mutate(&mut rng, a, b));
    }
}

fn client_seeds(protocol: &str) -> Vec<Vec<u8>> {
    transcripts(protocol)
        .into_iter()
        .map(|(_, input)| input)
        .collect()
}

fn upstream_seeds(target: &str) -> Vec<Vec<u8>> {
    harness::UPSTREAM_SEEDS
        .iter()
        .filter(|(name, _)| *name == target)
        .map(|(_, bytes)| bytes.to_vec())
        .collect()
}

#[test]
fn imap_pre_auth_core_holds_its_invariants() {
    explore(&client_seeds("imap"), 300, 0x1ead_beef, harness::imap);
}

#[test]
fn pop3_pre_auth_core_holds_its_invariants() {
    explore(&client_seeds("pop3"), 300, 0x0bad_cafe, harness::pop3);
}

#[test]
fn smtp_pre_auth_core_holds_its_invariants() {
    explore(&client_seeds("smtp"), 300, 0x5eed_5eed, harness::smtp);
}

#[test]
fn sasl_exchange_holds_its_invariants() {
    let seeds: Vec<Vec<u8>> = harness::SASL_SEEDS.iter().map(|s| s.to_vec()).collect();
    explore(&seeds, 2000, 0xa5a5_5a5a, harness::sasl);
}

#[test]
fn proxy_header_framing_holds_its_invariants() {
    let seeds: Vec<Vec<u8>> = harness::PROXY_SEEDS.iter().map(|s| s.to_vec()).collect();
    explore(&seeds, 3000, 0x7072_6f78, harness::proxy_header);
}

#[test]
fn upstream_login_cores_hold_their_invariants() {
    explore(
        &upstream_seeds("imap_upstream"),
        300,
        1,
        harness::imap_upstream,
    );
    explore(
        &upstream_seeds("pop3_upstream"),
        300,
        2,
        harness::pop3_upstream,
    );
    explore(
        &upstream_seeds("smtp_upstream"),
        300,
        3,
        harness::smtp_upstream,
    );
}

/// Writes the seed corpora of `fuzz/` from the transcripts and the built-in
/// seeds (run by `fuzz/seed.sh`; the output is committed).
#[test]
#[ignore = "writes fuzz/corpus; run through fuzz/seed.sh"]
fn write_seed_corpora() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let write = |target: &str, name: &str, bytes: &[u8]| {
        let dir: PathBuf = root.join(target);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(name), bytes).unwrap();
    };
    for (protocol, target) in [
        ("imap", "imap_preauth"),
        ("pop3", "pop3_preauth"),
        ("smtp", "smtp_preauth"),
    ] {
        for (name, input) in transcripts(protocol) {
            write(target, &format!("transcript-{name}"), &input);
        }
    }
    for (i, (target, bytes)) in harness::UPSTREAM_SEEDS.iter().enumerate() {
        write(target, &format!("seed-{i}"), bytes);
    }
    for (i, bytes) in harness::SASL_SEEDS.iter().enumerate() {
        write("sasl", &format!("seed-{i}"), bytes);
    }
    for (i, bytes) in harness::PROXY_SEEDS.iter().enumerate() {
        write("proxy_header", &format!("seed-{i}"), bytes);
    }
}
