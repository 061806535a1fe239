//! A short soak through a real `matchbox serve`: twenty thousand jobs with a
//! one-second time to live, submitted by many clients against the default
//! queue (a 429 is retried, as a client would). A correctness check, not a
//! speed test: every task must expire and be deleted, and every instance
//! dropped. The long run with memory figures is `bench`'s `soak` binary.

use std::sync::Arc;
use std::time::Duration;

use matchbox_tests::Host;
use matchbox_tests::load::{drain, figures, submit_all};

#[tokio::test(flavor = "multi_thread")]
async fn twenty_thousand_short_lived_jobs_drain_to_nothing() {
    let host = Arc::new(Host::start(&["--task-ttl", "1s", "--max-tasks", "1000000"]).await.unwrap());
    let client = reqwest::Client::new();
    submit_all(&client, &host, 20_000, 32, 10).await.unwrap();
    let peak = figures(&client, &host).await.unwrap();
    assert!(peak.tasks > 0, "tasks were held while they lived");
    drain(&client, &host, Duration::from_secs(120)).await.unwrap();
    let end = figures(&client, &host).await.unwrap();
    assert_eq!((end.tasks, end.in_flight, end.live), (0, 0, 0));
}
