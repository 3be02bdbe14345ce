//! The ADS gRPC service, framed so an idle stream holds no buffers.
//!
//! tonic's generated server encodes a stream's responses into one buffer
//! that keeps, for as long as the stream lives, the capacity of the
//! largest response it ever sent (a route table of a large workspace is
//! tens of KiB). With thousands of long-lived, mostly idle proxy streams
//! that was most of the edge's memory per proxy. Here each response
//! becomes one gRPC frame allocated at its exact size and freed once
//! HTTP/2 has written it; requests are decoded by tonic as before, with
//! small buffers. The SDS service a sidecar serves is framed the same way.

use std::convert::Infallible;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DiscoveryRequest, DiscoveryResponse,
};
use http_body::Frame;
use tokio::sync::mpsc;
use tonic::codec::{BufferSettings, Streaming};
use tonic::codegen::{Body, BoxFuture, Service, StdError, http};
use tonic::metadata::GRPC_CONTENT_TYPE;
use tonic::server::NamedService;
use tonic::{Request, Status};
use tonic_prost::ProstCodec;

use super::AdsServer;

/// A request decoder's first buffer and growth step: requests are small.
const REQUEST_BUFFER_BYTES: usize = 1024;

/// The largest request accepted, as tonic's default.
const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;

/// The responses of one stream, boxed so a stream's queue of them is
/// small while it waits.
pub(super) type Responses<T> = mpsc::Receiver<Result<Box<T>, Status>>;

/// One of the two xDS services weft serves: its name and its two
/// streaming methods.
pub trait XdsApi: Send + Sync + 'static {
    const NAME: &'static str;
    const SOTW: &'static str;
    const DELTA: &'static str;
}

/// `envoy.service.discovery.v3.AggregatedDiscoveryService`.
pub struct Aggregated;

impl XdsApi for Aggregated {
    const NAME: &'static str = "envoy.service.discovery.v3.AggregatedDiscoveryService";
    const SOTW: &'static str =
        "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
    const DELTA: &'static str =
        "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";
}

/// `envoy.service.secret.v3.SecretDiscoveryService`: a sidecar serves its
/// proxy's certificates with it.
pub struct Secrets;

impl XdsApi for Secrets {
    const NAME: &'static str = "envoy.service.secret.v3.SecretDiscoveryService";
    const SOTW: &'static str = "/envoy.service.secret.v3.SecretDiscoveryService/StreamSecrets";
    const DELTA: &'static str = "/envoy.service.secret.v3.SecretDiscoveryService/DeltaSecrets";
}

/// The gRPC service of xDS API `A`, served by an [`AdsServer`].
pub struct XdsService<A> {
    server: AdsServer,
    api: PhantomData<A>,
}

pub type AdsService = XdsService<Aggregated>;
pub type SdsService = XdsService<Secrets>;

impl<A> XdsService<A> {
    pub(super) fn new(server: AdsServer) -> XdsService<A> {
        XdsService {
            server,
            api: PhantomData,
        }
    }
}

impl<A> Clone for XdsService<A> {
    fn clone(&self) -> Self {
        XdsService::new(self.server.clone())
    }
}

impl<A: XdsApi> NamedService for XdsService<A> {
    const NAME: &'static str = A::NAME;
}

impl<A: XdsApi, B> Service<http::Request<B>> for XdsService<A>
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let response = serve::<A, B>(&self.server, request);
        Box::pin(async move { Ok(response) })
    }
}

fn serve<A: XdsApi, B>(
    server: &AdsServer,
    request: http::Request<B>,
) -> http::Response<tonic::body::Body>
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    let path = request.uri().path();
    if path != A::SOTW && path != A::DELTA {
        return Status::unimplemented(format!(
            "{path}: weft serves only the streaming methods ({}, {})",
            A::SOTW,
            A::DELTA
        ))
        .into_http();
    }
    if !identity_encoded(&request) {
        return Status::unimplemented("compressed requests are not supported").into_http();
    }
    if path == A::SOTW {
        respond(server.open_sotw(decoding::<DiscoveryRequest, B>(request)))
    } else {
        respond(server.open_delta(decoding::<DeltaDiscoveryRequest, B>(request)))
    }
}

/// weft enables no gRPC compression, so only identity-encoded messages.
fn identity_encoded<B>(request: &http::Request<B>) -> bool {
    request
        .headers()
        .get("grpc-encoding")
        .is_none_or(|encoding| encoding == "identity")
}

fn decoding<T, B>(request: http::Request<B>) -> Request<Streaming<T>>
where
    T: prost::Message + Default + Send + 'static,
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    let (parts, body) = request.into_parts();
    let decoder = ProstCodec::<(), T>::raw_decoder(BufferSettings::new(
        REQUEST_BUFFER_BYTES,
        REQUEST_BUFFER_BYTES,
    ));
    let messages = Streaming::new_request(decoder, body, None, Some(MAX_REQUEST_BYTES));
    Request::from_http(http::Request::from_parts(parts, messages))
}

fn respond<T: Framed>(responses: Responses<T>) -> http::Response<tonic::body::Body> {
    let mut response = http::Response::new(tonic::body::Body::new(Frames {
        responses,
        ended: false,
    }));
    response
        .headers_mut()
        .insert(http::header::CONTENT_TYPE, GRPC_CONTENT_TYPE);
    response
}

/// A response body of one gRPC message per frame, then the status in
/// trailers: OK when the session ends its stream, else its error.
struct Frames<T> {
    responses: Responses<T>,
    ended: bool,
}

/// The gRPC message prefix: a compression flag and a big-endian length.
const PREFIX_BYTES: usize = 5;

/// A response that can write its protobuf encoding into a frame.
pub(super) trait Framed: Send + Sync + 'static {
    fn encoded_len(&self) -> usize;
    fn encode(&self, buf: &mut BytesMut);
}

impl Framed for DiscoveryResponse {
    fn encoded_len(&self) -> usize {
        prost::Message::encoded_len(self)
    }

    fn encode(&self, buf: &mut BytesMut) {
        prost::Message::encode_raw(self, buf);
    }
}

impl<T: Framed> Body for Frames<T> {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        let status = match std::task::ready!(self.responses.poll_recv(cx)) {
            Some(Ok(message)) => return Poll::Ready(Some(frame(&*message))),
            Some(Err(status)) => status,
            None => Status::ok(""),
        };
        self.ended = true;
        let mut trailers = http::HeaderMap::new();
        // A status whose message cannot be a header value still ends the
        // stream, as an internal error.
        if let Err(unsendable) = status.add_header(&mut trailers) {
            trailers.clear();
            let _ = Status::internal(unsendable.code().description()).add_header(&mut trailers);
        }
        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }
}

fn frame<T: Framed>(message: &T) -> Result<Frame<Bytes>, Status> {
    let length = message.encoded_len();
    let prefix_length = u32::try_from(length)
        .map_err(|_| Status::resource_exhausted(format!("a response of {length} bytes")))?;
    let mut bytes = BytesMut::with_capacity(PREFIX_BYTES + length);
    bytes.put_u8(0);
    bytes.put_u32(prefix_length);
    message.encode(&mut bytes);
    debug_assert_eq!(bytes.len(), PREFIX_BYTES + length, "encoded_len is exact");
    Ok(Frame::data(bytes.freeze()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use prost::Message;

    #[tokio::test]
    async fn each_response_is_one_frame_and_the_status_ends_the_stream() {
        let (tx, responses) = mpsc::channel(2);
        let response = DiscoveryResponse {
            version_info: "v1".into(),
            ..Default::default()
        };
        tx.send(Ok(Box::new(response.clone()))).await.unwrap();
        tx.send(Err(Status::unavailable("the edge is stopping")))
            .await
            .unwrap();
        let mut body = Frames {
            responses,
            ended: false,
        };
        let data = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(data[0], 0, "not compressed");
        let length = u32::from_be_bytes(data[1..5].try_into().unwrap()) as usize;
        assert_eq!(length, data.len() - PREFIX_BYTES);
        assert_eq!(DiscoveryResponse::decode(&data[5..]).unwrap(), response);
        let trailers = body
            .frame()
            .await
            .unwrap()
            .unwrap()
            .into_trailers()
            .unwrap();
        assert_eq!(trailers["grpc-status"], "14");
        assert_eq!(trailers["grpc-message"], "the%20edge%20is%20stopping");
        assert!(body.is_end_stream());
        assert!(body.frame().await.is_none());
    }

    #[tokio::test]
    async fn a_closed_session_ends_with_ok() {
        let (tx, responses) = mpsc::channel::<Result<Box<DiscoveryResponse>, Status>>(1);
        drop(tx);
        let mut body = Frames {
            responses,
            ended: false,
        };
        let trailers = body
            .frame()
            .await
            .unwrap()
            .unwrap()
            .into_trailers()
            .unwrap();
        assert_eq!(trailers["grpc-status"], "0");
    }
}
