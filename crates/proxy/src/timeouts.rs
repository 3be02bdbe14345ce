//! The route's timeout and the try's, counted as Envoy counts them: from
//! when the downstream request has been received whole (a slow upload
//! does not use them up), until the upstream response has been received
//! whole. Before the response's headers, running out answers 504 (or
//! tries again); after them, the response is cut short: the stream is
//! reset (an HTTP/1.1 connection closed), the request logged `UT`.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::body::BoxError;

/// Which time ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    Route,
    Try,
}

/// A time running out, or never.
pub type Expiry = Pin<Box<dyn Future<Output = Expired> + Send>>;

/// The route's timeout of one request.
pub struct Clock {
    received: WhenReceived,
    route: Option<Duration>,
}

/// When the request was received whole.
enum WhenReceived {
    /// Already (a request without a body, or one read whole).
    At(Instant),
    /// Told by [`Received`] (None until then).
    Told(watch::Receiver<Option<Instant>>),
}

/// Tells the clock the request has been received whole.
pub struct Received(watch::Sender<Option<Instant>>);

impl Received {
    pub fn now(&self) {
        self.0.send_if_modified(|at| {
            let first = at.is_none();
            at.get_or_insert_with(Instant::now);
            first
        });
    }
}

impl Clock {
    /// A clock for a route's `timeout` (None: none) of a request still
    /// arriving, and what starts it.
    pub fn new(route: Option<Duration>) -> (Clock, Received) {
        let (tx, received) = watch::channel(None);
        let clock = Clock {
            received: WhenReceived::Told(received),
            route,
        };
        (clock, Received(tx))
    }

    /// A clock for a request received whole already: it runs from now
    /// (most requests: no channel to set up).
    pub fn started(route: Option<Duration>) -> Clock {
        Clock {
            received: WhenReceived::At(Instant::now()),
            route,
        }
    }

    /// When the route's time, or a try begun now with `per_try`, runs
    /// out: whichever comes first.
    pub fn expiry(&self, per_try: Option<Duration>) -> Expiry {
        let route = self.route;
        let began = Instant::now();
        let received = match &self.received {
            WhenReceived::At(at) => Ok(*at),
            WhenReceived::Told(told) => Err(told.clone()),
        };
        Box::pin(async move {
            if route.is_none() && per_try.is_none() {
                return std::future::pending().await;
            }
            let received = match received {
                Ok(at) => at,
                Err(mut told) => loop {
                    if let Some(at) = *told.borrow_and_update() {
                        break at;
                    }
                    if told.changed().await.is_err() {
                        // The request was dropped before it ended:
                        // nothing is waiting for this any more.
                        return std::future::pending().await;
                    }
                },
            };
            let route_at = route.map(|t| received + t);
            let try_at = per_try.map(|t| began.max(received) + t);
            let (at, expired) = match (route_at, try_at) {
                (Some(r), Some(t)) if t < r => (t, Expired::Try),
                (Some(r), _) => (r, Expired::Route),
                (None, Some(t)) => (t, Expired::Try),
                (None, None) => return std::future::pending().await,
            };
            tokio::time::sleep_until(at).await;
            expired
        })
    }
}

/// A response body that ends in an error when its expiry comes first:
/// hyper then resets the downstream stream, as Envoy does.
pub struct Deadline<B> {
    inner: B,
    expiry: Expiry,
    on_expiry: Option<Box<dyn FnOnce() + Send>>,
}

impl<B> Deadline<B> {
    pub fn new(inner: B, expiry: Expiry, on_expiry: impl FnOnce() + Send + 'static) -> Self {
        Deadline {
            inner,
            expiry,
            on_expiry: Some(Box::new(on_expiry)),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("upstream response timeout")]
pub struct ResponseTimeout;

impl<B> Body for Deadline<B>
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        // The time first: a body that is always ready is cut as well.
        if self.on_expiry.is_some() && self.expiry.as_mut().poll(cx).is_ready() {
            if let Some(on_expiry) = self.on_expiry.take() {
                on_expiry();
            }
            return Poll::Ready(Some(Err(Box::new(ResponseTimeout))));
        }
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTE: Duration = Duration::from_millis(200);

    /// How long `expiry` took, and what ran out.
    async fn timed(expiry: Expiry) -> (Duration, Expired) {
        let began = Instant::now();
        let expired = expiry.await;
        (began.elapsed(), expired)
    }

    #[tokio::test]
    async fn the_time_counts_from_the_request_received_whole() {
        let (clock, received) = Clock::new(Some(ROUTE));
        let mut expiry = clock.expiry(Some(Duration::from_secs(5)));
        // An upload of twice the route's timeout uses none of it.
        let during_upload = tokio::time::timeout(2 * ROUTE, &mut expiry).await;
        assert!(during_upload.is_err(), "expired before the request ended");
        received.now();
        let (took, expired) = timed(expiry).await;
        assert_eq!(expired, Expired::Route);
        assert!(took >= ROUTE && took < ROUTE * 10, "{took:?}");
    }

    #[tokio::test]
    async fn a_shorter_try_ends_first_and_a_late_one_at_once() {
        let (clock, received) = Clock::new(Some(Duration::from_secs(30)));
        received.now();
        let (took, expired) = timed(clock.expiry(Some(ROUTE))).await;
        assert_eq!(expired, Expired::Try);
        assert!(took >= ROUTE && took < ROUTE * 10, "{took:?}");

        let (clock, received) = Clock::new(Some(ROUTE));
        received.now();
        tokio::time::sleep(ROUTE).await;
        let (took, expired) = timed(clock.expiry(Some(Duration::from_secs(30)))).await;
        assert_eq!(expired, Expired::Route);
        assert!(took < ROUTE, "{took:?}");
    }

    #[tokio::test]
    async fn no_timeout_never_expires() {
        let (clock, received) = Clock::new(None);
        received.now();
        let never = tokio::time::timeout(2 * ROUTE, clock.expiry(None)).await;
        assert!(never.is_err());
    }
}
