//! Wall-clock time that follows tokio's clock.

use std::time::{Duration, SystemTime};

use time::OffsetDateTime;
use tokio::time::Instant;
use uuid::{NoContext, Timestamp, Uuid};

/// The wall time at start plus tokio's monotonic time since.
///
/// Timestamps, task ids (UUIDv7) and the 410-versus-404 decision all read
/// this clock, so under tokio's paused clock a test that advances two hours
/// sees two hours pass everywhere, and in production a step of the system
/// clock cannot make live tasks look expired.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    wall: SystemTime,
    mono: Instant,
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

impl Clock {
    pub fn new() -> Self {
        Clock { wall: SystemTime::now(), mono: Instant::now() }
    }

    pub fn now(&self) -> OffsetDateTime {
        OffsetDateTime::from(self.wall + self.mono.elapsed())
    }

    /// A fresh UUIDv7 task id stamped with this clock's time.
    pub fn new_task_id(&self) -> Uuid {
        let since_epoch = (self.wall + self.mono.elapsed()).duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        let ts = Timestamp::from_unix(NoContext, since_epoch.as_secs(), since_epoch.subsec_nanos());
        Uuid::new_v7(ts)
    }

    /// Whether `id` is a task id whose time to live has lapsed: it was
    /// created more than `ttl` ago by this clock. Ids that are not UUIDv7
    /// were never task ids and are never "expired".
    pub fn has_expired(&self, id: &Uuid, ttl: Duration) -> bool {
        let Some(ts) = id.get_timestamp() else { return false };
        if id.get_version_num() != 7 {
            return false;
        }
        let (secs, nanos) = ts.to_unix();
        let created = SystemTime::UNIX_EPOCH + Duration::new(secs, nanos);
        let now = self.wall + self.mono.elapsed();
        now.duration_since(created).is_ok_and(|age| age >= ttl)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn follows_the_paused_clock() {
        let clock = Clock::new();
        let id = clock.new_task_id();
        let before = clock.now();
        assert!(!clock.has_expired(&id, Duration::from_secs(3600)));
        tokio::time::advance(Duration::from_secs(3601)).await;
        assert!(clock.has_expired(&id, Duration::from_secs(3600)));
        assert_eq!((clock.now() - before).whole_seconds(), 3601);
        assert!(!clock.has_expired(&Uuid::nil(), Duration::ZERO));
    }
}
