//! Bodies as the proxy passes them on: counted (`%BYTES_RECEIVED%`,
//! `%BYTES_SENT%`), and a response body that writes the request's access
//! log once it has been sent whole, or dropped.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Any body the proxy sends, either way.
pub type Boxed = UnsyncBoxBody<Bytes, BoxError>;

pub fn boxed<B>(body: B) -> Boxed
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// A whole body held in memory (a local reply, a request kept to retry).
pub fn full(bytes: impl Into<Bytes>) -> Boxed {
    boxed(http_body_util::Full::new(bytes.into()))
}

/// Counts the bytes of `inner`; runs `done` with the count when the body
/// ends or is dropped.
pub struct Counted<B> {
    inner: B,
    bytes: Arc<AtomicU64>,
    done: Option<Box<dyn FnOnce(u64) + Send>>,
}

impl<B> Counted<B> {
    pub fn new(inner: B, bytes: Arc<AtomicU64>) -> Counted<B> {
        Counted {
            inner,
            bytes,
            done: None,
        }
    }

    pub fn on_end(mut self, done: impl FnOnce(u64) + Send + 'static) -> Counted<B> {
        self.done = Some(Box::new(done));
        self
    }

    fn finish(&mut self) {
        if let Some(done) = self.done.take() {
            done(self.bytes.load(Ordering::Relaxed));
        }
    }
}

impl<B> Drop for Counted<B> {
    fn drop(&mut self) {
        self.finish();
    }
}

impl<B> Body for Counted<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
            }
            Poll::Ready(None) => self.finish(),
            _ => {}
        }
        if self.inner.is_end_stream() {
            self.finish();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
