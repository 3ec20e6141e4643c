//! Growing, jittered pauses between the attempts of a step that keeps
//! failing (resubscribing to containerd, restarting it).

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// Pauses from 100 ms growing up to a maximum, with jitter, without end.
pub(crate) struct Retry {
    builder: ExponentialBuilder,
    max: Duration,
    pauses: ExponentialBackoff,
}

impl Retry {
    pub(crate) fn up_to(max: Duration) -> Self {
        let builder = ExponentialBuilder::default()
            .with_jitter()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(max)
            .without_max_times();
        Retry {
            pauses: builder.build(),
            builder,
            max,
        }
    }

    /// How long to wait before the next attempt.
    pub(crate) fn pause(&mut self) -> Duration {
        self.pauses.next().unwrap_or(self.max)
    }

    /// The step worked: the next failure starts again from the shortest pause.
    pub(crate) fn reset(&mut self) {
        self.pauses = self.builder.build();
    }
}
