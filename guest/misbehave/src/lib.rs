//! `misbehave`: a matcher that breaks the rules on purpose, for the host's
//! sandbox tests. It is built like every other guest and never embedded.
//!
//! The candidate's `id` picks the misbehaviour, so one component covers every
//! case:
//!
//! | `candidate.id`  | what it does |
//! | --------------- | ------------ |
//! | `panic`         | panics (a trap, with a message on stderr) |
//! | `loop`          | computes forever |
//! | `sleep`         | blocks in a host call (a WASI sleep of an hour) |
//! | `grow`          | allocates until memory runs out |
//! | `recurse`       | recurses until the stack overflows |
//! | `score-high`    | returns a score of 7.5 |
//! | `score-nan`     | returns a NaN score |
//! | `unknown-id`    | names a posting that was not submitted |
//! | `duplicate`     | names the same posting twice |
//! | `too-many`      | returns ten times `top_k` rankings |
//! | `unsorted`      | returns rankings worst first |
//! | `long-reasons`  | returns a reason of a megabyte |
//! | `log-flood`     | writes 100,000 log lines, then answers correctly |
//! | `stdout-flood`  | prints 1 MB to stdout and to stderr, then answers correctly |
//! | `capabilities`  | tries to read a file, an environment variable and a connection to `127.0.0.1:<summary>` (the port in the candidate's summary), and reports what happened as reasons |
//! | `huge-error-N`  | answers `internal` with a message of N MiB |
//! | `huge-reason-N` | answers with one posting whose one reason is N MiB |
//! | `invalid`       | answers `invalid-input` |
//! | `internal`      | answers `internal` |
//! | `remember`      | fills 8 MiB of fresh heap with a marker byte, then scans its memory as `recall` does (score 1.0: found) |
//! | `recall`        | grows its memory by 16 MiB and scans all of it for that marker: score 1.0 if found, 0.0 if not |
//! | `read-past-end` | reads a byte just past the end of its linear memory (a trap) |
//! | `slow`          | computes for 300 ms, then answers correctly |
//! | anything else   | answers correctly: every posting, score 0.5 |
//!
//! Built with the feature `info-trap`, `info-loop` or `info-nonsense`, its
//! `info()` panics, loops forever, or returns an empty name.

use matchbox_guest_kit::{Candidate, Level, MatchError, Matcher, MatcherInfo, Options, Posting, Ranking, log};

#[derive(Debug)]
pub struct Misbehave;

fn honest(postings: &[Posting], options: &Options) -> Vec<Ranking> {
    postings
        .iter()
        .take(options.top_k as usize)
        .map(|p| Ranking { posting_id: p.id.clone(), score: 0.5, reasons: vec!["honest answer".into()] })
        .collect()
}

fn one(posting_id: &str, score: f32) -> Vec<Ranking> {
    vec![Ranking { posting_id: posting_id.into(), score, reasons: vec![] }]
}

/// Bytes of linear memory 0. The workspace also builds this crate for the
/// host, where it is never run: there it has no linear memory.
#[cfg(target_arch = "wasm32")]
fn memory_bytes() -> usize {
    core::arch::wasm32::memory_size(0) * 65536
}
#[cfg(not(target_arch = "wasm32"))]
fn memory_bytes() -> usize {
    0
}

/// Grows linear memory 0 by `pages` of 64 KiB.
#[cfg(target_arch = "wasm32")]
fn grow_memory(pages: usize) {
    core::arch::wasm32::memory_grow(0, pages);
}
#[cfg(not(target_arch = "wasm32"))]
fn grow_memory(_pages: usize) {}

/// What `remember` leaves in memory for `recall` to look for.
const MARKER: u8 = 0xA7;

/// Whether 64 bytes of `MARKER` in a row appear anywhere in linear memory 0.
#[allow(unsafe_code)]
fn memory_holds_marker() -> bool {
    let len = memory_bytes();
    let mut run = 0;
    // Address 0 is the null pointer, which Rust may not read: start past it.
    for address in 1..len {
        // SAFETY: every address below `memory_size` is in bounds.
        let byte = unsafe { core::ptr::read_volatile(address as *const u8) };
        run = if byte == MARKER { run + 1 } else { 0 };
        if run == 64 {
            return true;
        }
    }
    false
}

/// Recurses on the wasm stack itself: every value lives in wasm locals, not
/// in the shadow stack in linear memory, and the rotate keeps LLVM from
/// turning the recursion into a loop.
#[inline(never)]
#[allow(unconditional_recursion)]
fn recurse(depth: u64, salt: u64) -> u64 {
    if depth == salt {
        return depth;
    }
    recurse(depth.wrapping_add(1), salt).rotate_left((depth & 63) as u32) ^ depth
}

impl Matcher for Misbehave {
    fn info() -> MatcherInfo {
        if cfg!(feature = "info-trap") {
            panic!("misbehave: info() traps on purpose");
        }
        if cfg!(feature = "info-loop") {
            let mut x = 0u64;
            loop {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
        MatcherInfo {
            name: if cfg!(feature = "info-nonsense") { String::new() } else { "misbehave".into() },
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Breaks the rules on purpose, for sandbox tests.".into(),
        }
    }

    fn rank(candidate: Candidate, postings: Vec<Posting>, options: Options) -> Result<Vec<Ranking>, MatchError> {
        let first = postings.first().map(|p| p.id.clone()).unwrap_or_default();
        match candidate.id.as_str() {
            "panic" => panic!("misbehave: deliberate panic"),
            "loop" => {
                let mut x = 0u64;
                loop {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }
            "sleep" => {
                std::thread::sleep(std::time::Duration::from_secs(3600));
                Ok(honest(&postings, &options))
            }
            "grow" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "recurse" => {
                // `salt` is never reached: the input cannot have 2^63 postings.
                let n = recurse(0, (postings.len() as u64) | (1 << 63));
                Ok(one(&first, (n % 2) as f32))
            }
            // `busy-1500`: computes for 1.5 s, then answers honestly.
            busy if busy.starts_with("busy-") => {
                let ms = busy["busy-".len()..].parse().unwrap_or(0);
                let started = std::time::Instant::now();
                while started.elapsed() < std::time::Duration::from_millis(ms) {
                    std::hint::black_box(started);
                }
                Ok(honest(&postings, &options))
            }
            "slow" => {
                let started = std::time::Instant::now();
                while started.elapsed() < std::time::Duration::from_millis(300) {
                    std::hint::black_box(started);
                }
                Ok(honest(&postings, &options))
            }
            "remember" => {
                let hoard = vec![MARKER; 8 << 20];
                std::hint::black_box(&hoard);
                // The scan `recall` runs, proved on memory that holds the marker.
                Ok(one(&first, if memory_holds_marker() { 1.0 } else { 0.0 }))
            }
            "recall" => {
                // Grows by 16 MiB first: the pages where `remember`'s hoard was.
                grow_memory(256);
                let found = memory_holds_marker();
                Ok(one(&first, if found { 1.0 } else { 0.0 }))
            }
            #[allow(unsafe_code)]
            "read-past-end" => {
                let end = memory_bytes();
                // SAFETY: none; the address is out of bounds on purpose, and
                // the host must stop the guest here.
                let byte = unsafe { core::ptr::read_volatile((end + 16) as *const u8) };
                Ok(one(&first, (byte % 2) as f32))
            }
            "score-high" => Ok(one(&first, 7.5)),
            "score-nan" => Ok(one(&first, f32::NAN)),
            "unknown-id" => Ok(one("no-such-posting", 0.5)),
            "duplicate" => Ok([one(&first, 0.6), one(&first, 0.5)].concat()),
            "too-many" => {
                let n = options.top_k as usize * 10;
                Ok(postings.iter().cycle().take(n).map(|p| one(&p.id, 0.5).remove(0)).collect())
            }
            "unsorted" => {
                let mut out: Vec<Ranking> =
                    postings.iter().enumerate().map(|(i, p)| one(&p.id, 0.1 + 0.01 * i as f32).remove(0)).collect();
                out.truncate(options.top_k as usize);
                Ok(out)
            }
            "long-reasons" => Ok(vec![Ranking { posting_id: first, score: 0.5, reasons: vec!["x".repeat(1 << 20)] }]),
            "log-flood" => {
                for i in 0..100_000 {
                    log(Level::Info, &format!("flood line {i}"));
                }
                Ok(honest(&postings, &options))
            }
            "stdout-flood" => {
                let line = "y".repeat(1000);
                for _ in 0..1_000 {
                    println!("{line}");
                    eprintln!("{line}");
                }
                Ok(honest(&postings, &options))
            }
            "capabilities" => {
                let file = match std::fs::read("/etc/passwd") {
                    Ok(bytes) => format!("file: read {} bytes", bytes.len()),
                    Err(e) => format!("file: denied ({e})"),
                };
                let env = match std::env::var("HOME") {
                    Ok(v) => format!("env: HOME={v}"),
                    Err(e) => format!("env: denied ({e})"),
                };
                let args = format!("args: {}", std::env::args().count());
                let port: u16 = candidate.summary.trim().parse().unwrap_or(6379);
                let net = match std::net::TcpStream::connect(("127.0.0.1", port)) {
                    Ok(_) => "net: connected".to_string(),
                    Err(e) => format!("net: denied ({e})"),
                };
                Ok(vec![Ranking { posting_id: first, score: 0.5, reasons: vec![file, env, args, net] }])
            }
            huge if huge.starts_with("huge-error-") => {
                let mib: usize = huge["huge-error-".len()..].parse().unwrap_or(1);
                Err(MatchError::Internal("e".repeat(mib << 20)))
            }
            huge if huge.starts_with("huge-reason-") => {
                let mib: usize = huge["huge-reason-".len()..].parse().unwrap_or(1);
                Ok(vec![Ranking { posting_id: first, score: 0.5, reasons: vec!["r".repeat(mib << 20)] }])
            }
            "invalid" => Err(MatchError::InvalidInput("misbehave: the input is wrong on purpose".into())),
            "internal" => Err(MatchError::Internal("misbehave: broke on purpose".into())),
            _ => Ok(honest(&postings, &options)),
        }
    }
}

matchbox_guest_kit::export_matcher!(Misbehave);
