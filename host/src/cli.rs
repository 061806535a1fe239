//! The `matchbox` client commands: submit a job, read a task, manage
//! matchers, against a running host.
//!
//! Exit codes, for scripts ([`exit`]): 0 success; 1 the task failed, was
//! cancelled, or was deleted or expired before it ended; 2 the request was
//! refused (a 4xx: bad input, unknown task or matcher); 3 the server could
//! not be reached or answered 5xx; 4 nothing was sent: the command line or a
//! local file is wrong. Errors from the server are shown as the server's own
//! message.

use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{Value, json};

/// Where the server is and who is asking.
#[derive(Debug, Clone, Args)]
pub struct Connection {
    /// The matchbox server.
    #[arg(long, env = "MATCHBOX_SERVER", default_value = "http://127.0.0.1:8080", global = true)]
    pub server: String,
    /// API key, sent as `Authorization: Bearer <key>`.
    #[arg(long, env = "MATCHBOX_API_KEY", global = true, hide_env_values = true)]
    pub api_key: Option<String>,
    /// Print the server's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// A JSON file holding the candidate.
    #[arg(long, required_unless_present = "batch", conflicts_with = "batch")]
    pub candidate: Option<PathBuf>,
    /// A JSON file holding an array of postings.
    #[arg(long, required_unless_present = "batch", conflicts_with = "batch")]
    pub postings: Option<PathBuf>,
    /// A file of jobs, one JSON object per line, each as `POST /jobs/match`
    /// takes it: submitted with `POST /jobs/batch`, then followed to their
    /// ends with a progress bar, and summed up in a table.
    #[arg(long, value_name = "JSONL")]
    pub batch: Option<PathBuf>,
    /// Jobs per `POST /jobs/batch` (at most the server's `--max-batch`).
    #[arg(long, default_value_t = 100, requires = "batch", value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_size: u32,
    /// The matcher (`name` or `name@sha256:...`); the server's default if absent.
    #[arg(long)]
    pub matcher: Option<String>,
    /// How many rankings to return.
    #[arg(long)]
    pub top_k: Option<u32>,
    /// Wait for the result and print it.
    #[arg(long)]
    pub wait: bool,
}

#[derive(Debug, Subcommand)]
pub enum MatchersCommand {
    /// List the matchers the server runs.
    List,
    /// Upload a component as matcher NAME.
    Add { name: String, file: PathBuf },
    /// Remove the uploaded matcher NAME.
    Rm { name: String },
}

/// The exit codes of the client commands.
pub mod exit {
    /// The task failed, was cancelled, or was deleted or expired before it
    /// ended.
    pub const TASK_FAILED: u8 = 1;
    /// The server refused the request (a 4xx).
    pub const REFUSED: u8 = 2;
    /// The server could not be reached, or failed (a 5xx).
    pub const SERVER: u8 = 3;
    /// Nothing was sent: the command line or a local file is wrong.
    pub const LOCAL: u8 = 4;
}

/// How long one long poll of `submit --wait` asks the server to hold.
const WAIT_SLICE: &str = "10s";

/// A failure, with the exit code it maps to.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
    /// The server's status code, when the server answered.
    status: Option<u16>,
}

impl Failure {
    /// A failure that no server answer caused.
    pub fn new(code: u8, message: impl Into<String>) -> Self {
        Failure { code, message: message.into(), status: None }
    }
}

fn failure(code: u8, message: impl Into<String>) -> Failure {
    Failure::new(code, message)
}

struct Client {
    http: reqwest::Client,
    conn: Connection,
}

impl Client {
    fn new(conn: Connection) -> Self {
        Client { http: reqwest::Client::new(), conn }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.conn.server.trim_end_matches('/'))
    }

    /// Sends a request; a 4xx or 5xx becomes a failure carrying the server's
    /// message.
    async fn send(&self, request: reqwest::RequestBuilder) -> Result<Value, Failure> {
        let request = match &self.conn.api_key {
            Some(key) => request.bearer_auth(key),
            None => request,
        };
        let response = request
            .send()
            .await
            .map_err(|e| failure(exit::SERVER, format!("cannot reach {}: {e}", self.conn.server)))?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| failure(exit::SERVER, format!("reading the answer: {e}")))?;
        let body: Value =
            if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap_or(Value::Null) };
        if status.is_success() {
            return Ok(body);
        }
        let message = body["error"]["message"].as_str().map(str::to_string).unwrap_or_else(|| status.to_string());
        Err(Failure {
            code: if status.is_client_error() { exit::REFUSED } else { exit::SERVER },
            message,
            status: Some(status.as_u16()),
        })
    }
}

/// A local JSON file; a missing or broken one is [`exit::LOCAL`].
pub fn read_json(path: &std::path::Path) -> Result<Value, Failure> {
    let text = std::fs::read_to_string(path).map_err(|e| failure(exit::LOCAL, format!("{}: {e}", path.display())))?;
    serde_json::from_str(&text).map_err(|e| failure(exit::LOCAL, format!("{}: not JSON: {e}", path.display())))
}

pub async fn submit(conn: Connection, args: SubmitArgs) -> Result<(), Failure> {
    if let Some(file) = &args.batch {
        return submit_batch(conn, file, args.batch_size as usize).await;
    }
    let json_out = conn.json;
    let client = Client::new(conn);
    let (Some(candidate), Some(postings)) = (&args.candidate, &args.postings) else {
        return Err(failure(exit::LOCAL, "give --candidate and --postings, or --batch"));
    };
    let mut body = json!({ "candidate": read_json(candidate)?, "postings": read_json(postings)? });
    if let Some(m) = &args.matcher {
        body["matcher"] = json!(m);
    }
    if let Some(k) = args.top_k {
        body["options"] = json!({ "top_k": k });
    }
    let accepted = client.send(client.http.post(client.url("/jobs/match")).json(&body)).await?;
    let id = accepted["task_id"].as_str().unwrap_or_default().to_string();
    if !args.wait {
        if json_out {
            println!("{accepted}");
        } else {
            println!("{id}");
        }
        return Ok(());
    }
    if !std::io::stderr().is_terminal() {
        // Off a terminal there is no spinner to show the id: a script (or a
        // log) learns which task is awaited, should the wait be cut short.
        eprintln!("task {id} accepted; waiting for it to end");
    }
    let task = wait_for(&client, &id).await?;
    show_task(&task, json_out)
}

/// Jobs followed at once by `submit --batch`.
const FOLLOWED_AT_ONCE: usize = 16;

/// `submit --batch`: the file's jobs in batches of `size`, then every task
/// followed to its end, then a table (or, with `--json`, the tasks).
async fn submit_batch(conn: Connection, file: &std::path::Path, size: usize) -> Result<(), Failure> {
    let json_out = conn.json;
    let client = std::sync::Arc::new(Client::new(conn));
    let jobs = read_lines(file)?;
    if jobs.is_empty() {
        return Err(failure(exit::LOCAL, format!("{}: no jobs in the file", file.display())));
    }
    let mut ids: Vec<String> = Vec::with_capacity(jobs.len());
    for (chunk, batch) in jobs.chunks(size).enumerate() {
        let sent = client.send(client.http.post(client.url("/jobs/batch")).json(&json!({ "jobs": batch }))).await;
        let accepted = sent.map_err(|mut refused| {
            // The server names the job within its batch; say which line.
            let first = chunk * size;
            refused.message = format!(
                "lines {}-{} (a batch): {}{}",
                first + 1,
                first + batch.len(),
                refused.message,
                if ids.is_empty() { String::new() } else { format!("; {} jobs before them were accepted", ids.len()) }
            );
            refused
        })?;
        for task in accepted["tasks"].as_array().into_iter().flatten() {
            ids.push(task["task_id"].as_str().unwrap_or_default().to_string());
        }
    }
    let mut progress = Progress::new(ids.len());
    progress.show();
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(FOLLOWED_AT_ONCE));
    let mut following = tokio::task::JoinSet::new();
    for (index, id) in ids.iter().cloned().enumerate() {
        let (client, slots) = (client.clone(), slots.clone());
        following.spawn(async move {
            let _slot = slots.acquire_owned().await;
            (index, wait_quietly(&client, &id).await)
        });
    }
    let mut ends: Vec<Option<Result<Value, String>>> = vec![None; ids.len()];
    while let Some(joined) = following.join_next().await {
        let (index, end) = joined.map_err(|e| failure(exit::LOCAL, format!("following a task: {e}")))?;
        ends[index] = Some(end);
        progress.ended();
    }
    progress.clear();
    let tasks: Vec<(String, Result<Value, String>)> =
        ids.into_iter().zip(ends).map(|(id, end)| (id, end.expect("every task followed"))).collect();
    print_batch(&tasks, json_out)
}

/// The jobs of a JSON-lines file; blank lines skipped, a bad line named.
fn read_lines(path: &std::path::Path) -> Result<Vec<Value>, Failure> {
    let text = std::fs::read_to_string(path).map_err(|e| failure(exit::LOCAL, format!("{}: {e}", path.display())))?;
    let mut jobs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let job: Value = serde_json::from_str(line)
            .map_err(|e| failure(exit::LOCAL, format!("{}:{}: not JSON: {e}", path.display(), i + 1)))?;
        jobs.push(job);
    }
    Ok(jobs)
}

/// A task's end, or why it has none, without a spinner of its own.
async fn wait_quietly(client: &Client, id: &str) -> Result<Value, String> {
    loop {
        match client.send(client.http.get(client.url(&format!("/tasks/{id}?wait={WAIT_SLICE}")))).await {
            Ok(task) if matches!(task["status"].as_str(), Some("completed" | "failed" | "cancelled")) => {
                return Ok(task);
            }
            Ok(_) => {}
            Err(Failure { status: Some(404), .. }) => return Err("deleted before it ended".into()),
            Err(Failure { status: Some(410), .. }) => return Err("expired before it ended".into()),
            Err(other) => return Err(other.message),
        }
    }
}

/// The summary of `submit --batch`: a line per task, then the counts.
fn print_batch(tasks: &[(String, Result<Value, String>)], json_out: bool) -> Result<(), Failure> {
    let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
    for (_, end) in tasks {
        let status = match end {
            Ok(task) => task["status"].as_str().unwrap_or_default().to_string(),
            Err(_) => "lost".to_string(),
        };
        *counts.entry(status).or_default() += 1;
    }
    if json_out {
        let all: Vec<Value> = tasks
            .iter()
            .map(|(id, end)| match end {
                Ok(task) => task.clone(),
                Err(why) => json!({ "task_id": id, "error": { "message": why } }),
            })
            .collect();
        println!("{}", Value::Array(all));
    } else {
        println!("{:<38} {:<10} {:<14} {:<24} {:>6}", "task", "status", "matcher", "best posting", "score");
        for (id, end) in tasks {
            match end {
                Ok(task) => {
                    let best = &task["result"]["rankings"][0];
                    let (posting, score) = match best["posting_id"].as_str() {
                        Some(posting) => {
                            (posting.to_string(), format!("{:.3}", best["score"].as_f64().unwrap_or_default()))
                        }
                        None => (
                            task["error"]["kind"].as_str().map(|k| format!("({k})")).unwrap_or_default(),
                            String::new(),
                        ),
                    };
                    println!(
                        "{id:<38} {:<10} {:<14} {posting:<24} {score:>6}",
                        task["status"].as_str().unwrap_or_default(),
                        task["matcher"].as_str().unwrap_or_default(),
                    );
                }
                Err(why) => println!("{id:<38} {:<10} {why}", "lost"),
            }
        }
        let summary: Vec<String> = counts.iter().map(|(status, n)| format!("{n} {status}")).collect();
        println!("{} jobs: {}", tasks.len(), summary.join(", "));
    }
    let ended_badly = tasks.len() - counts.get("completed").copied().unwrap_or(0);
    match ended_badly {
        0 => Ok(()),
        n => Err(failure(exit::TASK_FAILED, format!("{n} of {} jobs did not complete", tasks.len()))),
    }
}

/// A progress bar on standard error, when it is a terminal; off one, a
/// line at the start and at each tenth.
struct Progress {
    on: bool,
    total: usize,
    ended: usize,
}

impl Progress {
    fn new(total: usize) -> Self {
        Progress { on: std::io::stderr().is_terminal(), total, ended: 0 }
    }

    fn ended(&mut self) {
        self.ended += 1;
        if self.on || self.ended == self.total || self.ended.is_multiple_of(self.total.div_ceil(10)) {
            self.show();
        }
    }

    fn show(&self) {
        const WIDTH: usize = 30;
        let filled = WIDTH * self.ended / self.total.max(1);
        let bar = format!("[{}{}] {}/{} ended", "#".repeat(filled), ".".repeat(WIDTH - filled), self.ended, self.total);
        if self.on {
            eprint!("\r{bar}");
            let _ = std::io::stderr().flush();
        } else {
            eprintln!("{bar}");
        }
    }

    fn clear(&self) {
        if self.on {
            eprint!("\r\x1b[2K");
            let _ = std::io::stderr().flush();
        }
    }
}

/// A spinner on standard error, when it is a terminal: it turns while the
/// command waits, and its line is cleared before anything else is printed.
struct Spinner {
    on: bool,
    frame: usize,
}

impl Spinner {
    const FRAMES: [char; 4] = ['|', '/', '-', '\\'];

    fn new() -> Self {
        Spinner { on: std::io::stderr().is_terminal(), frame: 0 }
    }

    fn turn(&mut self, id: &str, status: &str) {
        if self.on {
            eprint!("\r{} task {id} {status}", Self::FRAMES[self.frame % Self::FRAMES.len()]);
            let _ = std::io::stderr().flush();
            self.frame += 1;
        }
    }

    fn clear(&self) {
        if self.on {
            eprint!("\r\x1b[2K");
            let _ = std::io::stderr().flush();
        }
    }
}

/// Waits until the task ends: on its event stream (`GET
/// /tasks/{id}/events`), which the server pushes the end on; from a server
/// without one, or if the stream breaks, by long polls.
async fn wait_for(client: &Client, id: &str) -> Result<Value, Failure> {
    if let Some(task) = follow_events(client, id).await? {
        return Ok(task);
    }
    long_poll(client, id).await
}

/// Follows the task's event stream until its end: `Some(task)`; `None` if
/// the server has no such stream or it broke before the end.
async fn follow_events(client: &Client, id: &str) -> Result<Option<Value>, Failure> {
    let mut spinner = Spinner::new();
    let mut request = client.http.get(client.url(&format!("/tasks/{id}/events"))).header("accept", "text/event-stream");
    if let Some(key) = &client.conn.api_key {
        request = request.bearer_auth(key);
    }
    let Ok(mut response) = request.send().await else { return Ok(None) };
    if response.status() != reqwest::StatusCode::OK {
        // The task's own 404 and 410 are the long poll's to tell, and a
        // server without the route is one to long-poll.
        return Ok(None);
    }
    let (mut buffer, mut status) = (String::new(), String::from("pending"));
    loop {
        spinner.turn(id, &status);
        let chunk = tokio::select! {
            chunk = response.chunk() => chunk,
            _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
        };
        let Ok(Some(chunk)) = chunk else {
            spinner.clear();
            return Ok(None);
        };
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let (mut event, mut data) = (String::new(), String::new());
            for line in block.lines() {
                if let Some(name) = line.strip_prefix("event:") {
                    event = name.trim().to_string();
                } else if let Some(value) = line.strip_prefix("data:") {
                    data.push_str(value.strip_prefix(' ').unwrap_or(value));
                }
            }
            match event.as_str() {
                "completed" | "failed" | "cancelled" => {
                    spinner.clear();
                    return Ok(serde_json::from_str(&data).ok());
                }
                "gone" => {
                    // Said as the long poll says it: deleted, or expired.
                    spinner.clear();
                    let body: Value = serde_json::from_str(&data).unwrap_or(Value::Null);
                    let how = if body["error"]["code"] == "task_expired" { "expired" } else { "was deleted" };
                    return Err(failure(exit::TASK_FAILED, format!("the task {id} {how} before it ended")));
                }
                "" => {}
                other => status = other.to_string(),
            }
        }
    }
}

/// Waits until the task ends, by long polls of `GET /tasks/{id}?wait=`,
/// with a spinner on a terminal that turns while a poll is held. The
/// spinner's line is cleared before anything else is printed.
async fn long_poll(client: &Client, id: &str) -> Result<Value, Failure> {
    let mut spinner = Spinner::new();
    let mut status = String::from("pending");
    // A server whose `--max-wait` is below the slice refuses the long poll
    // (400): then plain reads, a tenth of a second apart.
    let mut long_poll = true;
    loop {
        let path = if long_poll { format!("/tasks/{id}?wait={WAIT_SLICE}") } else { format!("/tasks/{id}") };
        let poll = client.send(client.http.get(client.url(&path)));
        tokio::pin!(poll);
        let answer = loop {
            spinner.turn(id, &status);
            tokio::select! {
                answer = &mut poll => break answer,
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        };
        let task = match answer {
            Ok(task) => task,
            Err(Failure { status: Some(400), .. }) if long_poll => {
                long_poll = false;
                continue;
            }
            Err(Failure { status: Some(404), .. }) => {
                spinner.clear();
                return Err(failure(exit::TASK_FAILED, format!("the task {id} was deleted before it ended")));
            }
            Err(Failure { status: Some(410), .. }) => {
                spinner.clear();
                return Err(failure(exit::TASK_FAILED, format!("the task {id} expired before it ended")));
            }
            Err(other) => {
                spinner.clear();
                return Err(other);
            }
        };
        status = task["status"].as_str().unwrap_or_default().to_string();
        if matches!(status.as_str(), "completed" | "failed" | "cancelled") {
            spinner.clear();
            return Ok(task);
        }
        if !long_poll {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn show_task(task: &Value, json_out: bool) -> Result<(), Failure> {
    let status = task["status"].as_str().unwrap_or_default();
    if json_out {
        println!("{task}");
    } else {
        println!(
            "task {} ({status}, matcher {})",
            task["task_id"].as_str().unwrap_or_default(),
            task["matcher"].as_str().unwrap_or_default()
        );
        print_rankings(task);
        if let Some(error) = task.get("error") {
            println!("error: {} ({})", error["message"].as_str().unwrap_or_default(), error["kind"]);
        }
    }
    match status {
        "completed" => Ok(()),
        "pending" | "running" => Ok(()),
        _ => Err(failure(exit::TASK_FAILED, format!("the task {status}"))),
    }
}

/// A task's rankings as a table, if it has any.
pub fn print_rankings(task: &Value) {
    let Some(rankings) = task["result"]["rankings"].as_array() else { return };
    println!("{:>4}  {:<24} {:>6}  reasons", "rank", "posting", "score");
    for (i, r) in rankings.iter().enumerate() {
        let reasons: Vec<&str> =
            r["reasons"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
        println!(
            "{:>4}  {:<24} {:>6.3}  {}",
            i + 1,
            r["posting_id"].as_str().unwrap_or_default(),
            r["score"].as_f64().unwrap_or_default(),
            reasons.join("; ")
        );
    }
}

pub async fn task(conn: Connection, id: String, wait: Option<String>) -> Result<(), Failure> {
    let json_out = conn.json;
    let client = Client::new(conn);
    let mut request = client.http.get(client.url(&format!("/tasks/{id}")));
    if let Some(wait) = &wait {
        request = request.query(&[("wait", wait)]);
    }
    let task = client.send(request).await?;
    show_task(&task, json_out)
}

pub async fn matchers(conn: Connection, command: MatchersCommand) -> Result<(), Failure> {
    let json_out = conn.json;
    let client = Client::new(conn);
    match command {
        MatchersCommand::List => {
            let list = client.send(client.http.get(client.url("/matchers"))).await?;
            if json_out {
                println!("{list}");
                return Ok(());
            }
            println!("{:<20} {:<10} {:<10} {:<12} description", "name", "version", "source", "sha256");
            for m in list["matchers"].as_array().into_iter().flatten() {
                let hex = m["digest"].as_str().unwrap_or_default().trim_start_matches("sha256:");
                println!(
                    "{:<20} {:<10} {:<10} {:<12} {}",
                    m["name"].as_str().unwrap_or_default(),
                    m["version"].as_str().unwrap_or_default(),
                    m["source"].as_str().unwrap_or_default(),
                    &hex[..hex.len().min(12)],
                    m["description"].as_str().unwrap_or_default()
                );
            }
        }
        MatchersCommand::Add { name, file } => {
            let bytes = std::fs::read(&file).map_err(|e| failure(exit::LOCAL, format!("{}: {e}", file.display())))?;
            let added = client.send(client.http.put(client.url(&format!("/matchers/{name}"))).body(bytes)).await?;
            if json_out {
                println!("{added}");
            } else {
                println!(
                    "{} {} {}",
                    added["name"].as_str().unwrap_or_default(),
                    added["version"].as_str().unwrap_or_default(),
                    added["digest"].as_str().unwrap_or_default()
                );
            }
        }
        MatchersCommand::Rm { name } => {
            client.send(client.http.delete(client.url(&format!("/matchers/{name}")))).await?;
            if !json_out {
                println!("removed {name}");
            }
        }
    }
    Ok(())
}
