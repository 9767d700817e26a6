//! One run of a service check against an instance: an HTTP request, a TCP connection or a
//! grpc.health.v1 call, each within its timeout, as Consul and Nomad judge them. (Script checks
//! run in the task, through its driver: `services.rs`.)

use std::collections::BTreeMap;
use std::time::Duration;

use helios_core::service::CheckStatus;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The first bytes of an HTTP answer that are read (its status line and some of its body).
const MAX_HTTP_ANSWER: u64 = 1024;

/// Redirects an http check follows (Consul's client follows them too).
const MAX_REDIRECTS: usize = 5;

/// `address:port`, an IPv6 address in brackets.
fn host_port(address: &str, port: u16) -> String {
    if address.contains(':') {
        format!("[{address}]:{port}")
    } else {
        format!("{address}:{port}")
    }
}

/// An HTTP/1.1 request: 2xx passing, 429 warning, anything else (or no answer) critical. A
/// redirect to the same server, or to another plain-HTTP one, is followed.
pub async fn http(
    address: &str,
    port: u16,
    path: &str,
    method: &str,
    headers: &BTreeMap<String, Vec<String>>,
    timeout: Duration,
) -> (CheckStatus, String) {
    let deadline = tokio::time::Instant::now() + timeout;
    let (mut host, mut path) = (host_port(address, port), path.to_string());
    for _ in 0..=MAX_REDIRECTS {
        let target = format!("http://{host}{path}");
        let answer = match tokio::time::timeout_at(deadline, exchange(&host, &path, method, headers)).await {
            Err(_) => return (CheckStatus::Critical, format!("{method} {target}: timed out after {timeout:?}")),
            Ok(Err(e)) => return (CheckStatus::Critical, format!("{method} {target}: {e}")),
            Ok(Ok(answer)) => String::from_utf8_lossy(&answer).into_owned(),
        };
        let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
        let status_line = head.lines().next().unwrap_or_default();
        let code = status_line.split_whitespace().nth(1).and_then(|c| c.parse::<u16>().ok());
        let location = head.lines().find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.trim().eq_ignore_ascii_case("location").then(|| value.trim().to_string())
        });
        match (code, location) {
            (Some(301 | 302 | 303 | 307 | 308), Some(location)) => {
                if let Some(rest) = location.strip_prefix("http://") {
                    let (to_host, to_path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
                    host = to_host.to_string();
                    path = if to_path.is_empty() { "/".to_string() } else { to_path.to_string() };
                } else if location.starts_with('/') {
                    path = location;
                } else {
                    let why = format!("{method} {target}: {status_line}: cannot follow the redirect to {location:?}");
                    return (CheckStatus::Critical, why);
                }
            }
            _ => {
                let output = format!("{method} {target}: {status_line} Output: {}", body.trim());
                let status = match code {
                    Some(200..=299) => CheckStatus::Passing,
                    Some(429) => CheckStatus::Warning,
                    _ => CheckStatus::Critical,
                };
                return (status, output);
            }
        }
    }
    (CheckStatus::Critical, format!("{method} http://{host}{path}: more than {MAX_REDIRECTS} redirects"))
}

/// One request to `host` (HOST:PORT) and the first bytes of its answer.
async fn exchange(
    host: &str,
    path: &str,
    method: &str,
    headers: &BTreeMap<String, Vec<String>>,
) -> std::io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(host).await?;
    let mut request = format!("{method} {path} HTTP/1.1\r\n");
    if !headers.keys().any(|k| k.eq_ignore_ascii_case("host")) {
        request.push_str(&format!("Host: {host}\r\n"));
    }
    for (name, values) in headers {
        for value in values {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    request.push_str("User-Agent: helios-check\r\nAccept: */*\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    stream.take(MAX_HTTP_ANSWER).read_to_end(&mut answer).await?;
    Ok(answer)
}

/// A TCP connection: passing when it is accepted.
pub async fn tcp(address: &str, port: u16, timeout: Duration) -> (CheckStatus, String) {
    let target = host_port(address, port);
    match tokio::time::timeout(timeout, TcpStream::connect(&target)).await {
        Ok(Ok(_)) => (CheckStatus::Passing, format!("TCP connect {target}: Success")),
        Ok(Err(e)) => (CheckStatus::Critical, format!("TCP connect {target}: {e}")),
        Err(_) => (CheckStatus::Critical, format!("TCP connect {target}: timed out after {timeout:?}")),
    }
}

/// grpc.health.v1's `Check` for `service`: SERVING is passing, any other answer critical.
pub async fn grpc(address: &str, port: u16, service: &str, timeout: Duration) -> (CheckStatus, String) {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    let target = host_port(address, port);
    let call = async {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{target}"))
            .map_err(|e| e.to_string())?
            .connect_timeout(timeout)
            .timeout(timeout);
        let channel = endpoint.connect().await.map_err(|e| format!("cannot connect: {e}"))?;
        let answer = HealthClient::new(channel)
            .check(HealthCheckRequest { service: service.to_string() })
            .await
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?;
        Ok::<_, String>(answer.into_inner().status)
    };
    let what = if service.is_empty() { target.clone() } else { format!("{target} service {service:?}") };
    match tokio::time::timeout(timeout, call).await {
        Err(_) => (CheckStatus::Critical, format!("gRPC health {what}: timed out after {timeout:?}")),
        Ok(Err(e)) => (CheckStatus::Critical, format!("gRPC health {what}: {e}")),
        Ok(Ok(status)) => {
            let name = ServingStatus::try_from(status).map_or("UNKNOWN", |s| s.as_str_name());
            let passing = status == ServingStatus::Serving as i32;
            let status = if passing { CheckStatus::Passing } else { CheckStatus::Critical };
            (status, format!("gRPC health {what}: {name}"))
        }
    }
}

/// A script's exit code as Consul judges it: 0 passing, 1 warning, anything else critical.
pub fn script_status(code: i32) -> CheckStatus {
    match code {
        0 => CheckStatus::Passing,
        1 => CheckStatus::Warning,
        _ => CheckStatus::Critical,
    }
}

#[cfg(test)]
mod tests {
    use tokio::net::TcpListener;

    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    /// Answers every connection with `answer` after reading the request; returns the port and
    /// the requests it read.
    async fn http_server(answer: &'static str) -> (u16, tokio::sync::mpsc::UnboundedReceiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let (seen, requests) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut request = vec![0u8; 4096];
                let n = stream.read(&mut request).await.unwrap_or(0);
                let _ = seen.send(String::from_utf8_lossy(&request[..n]).into_owned());
                let _ = stream.write_all(answer.as_bytes()).await;
            }
        });
        (port, requests)
    }

    #[tokio::test]
    async fn http_2xx_passes_429_warns_and_anything_else_is_critical() {
        let (ok, mut requests) = http_server("HTTP/1.1 204 No Content\r\n\r\n").await;
        let headers = BTreeMap::from([("X-Probe".to_string(), vec!["yes".to_string()])]);
        let (status, output) = http("127.0.0.1", ok, "/health?full=1", "POST", &headers, SECOND).await;
        assert_eq!(status, CheckStatus::Passing, "{output}");
        let request = requests.recv().await.expect("a request");
        assert!(request.starts_with("POST /health?full=1 HTTP/1.1\r\n"), "{request}");
        assert!(request.contains("X-Probe: yes\r\n"), "{request}");
        let (busy, _r) = http_server("HTTP/1.1 429 Too Many Requests\r\n\r\nslow down").await;
        let (status, output) = http("127.0.0.1", busy, "/", "GET", &BTreeMap::new(), SECOND).await;
        assert_eq!(status, CheckStatus::Warning);
        assert!(output.contains("429 Too Many Requests") && output.contains("slow down"), "{output}");
        let (broken, _r) = http_server("HTTP/1.1 500 Internal Server Error\r\n\r\n").await;
        assert_eq!(http("127.0.0.1", broken, "/", "GET", &BTreeMap::new(), SECOND).await.0, CheckStatus::Critical);
    }

    #[tokio::test]
    async fn a_redirect_is_followed_to_its_answer() {
        let (target, _r) = http_server("HTTP/1.1 200 OK\r\n\r\nhere").await;
        let moved: &'static str = Box::leak(
            format!("HTTP/1.1 301 Moved Permanently\r\nLocation: http://127.0.0.1:{target}/health/\r\n\r\n")
                .into_boxed_str(),
        );
        let (redirecting, mut requests) = http_server(moved).await;
        let (status, output) = http("127.0.0.1", redirecting, "/health", "GET", &BTreeMap::new(), SECOND).await;
        assert_eq!(status, CheckStatus::Passing, "{output}");
        assert!(output.contains(&format!("http://127.0.0.1:{target}/health/")) && output.ends_with("here"), "{output}");
        assert!(requests.recv().await.expect("asked first").starts_with("GET /health HTTP/1.1"));
        let (looping, _r) = http_server("HTTP/1.1 302 Found\r\nLocation: /again\r\n\r\n").await;
        let (status, output) = http("127.0.0.1", looping, "/", "GET", &BTreeMap::new(), SECOND).await;
        assert_eq!(status, CheckStatus::Critical);
        assert!(output.contains("more than 5 redirects"), "{output}");
    }

    #[tokio::test]
    async fn a_closed_port_or_a_silent_server_is_critical() {
        let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind").local_addr().expect("addr").port();
        assert_eq!(tcp("127.0.0.1", closed, SECOND).await.0, CheckStatus::Critical);
        assert_eq!(http("127.0.0.1", closed, "/", "GET", &BTreeMap::new(), SECOND).await.0, CheckStatus::Critical);
        // Accepts and never answers: the timeout decides.
        let silent = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = silent.local_addr().expect("addr").port();
        let (status, output) = http("127.0.0.1", port, "/", "GET", &BTreeMap::new(), Duration::from_millis(200)).await;
        assert_eq!(status, CheckStatus::Critical);
        assert!(output.contains("timed out"), "{output}");
        assert_eq!(tcp("127.0.0.1", port, SECOND).await.0, CheckStatus::Passing, "it accepts");
    }

    #[tokio::test]
    async fn grpc_health_serving_passes_and_not_serving_is_critical() {
        let (reporter, service) = tonic_health::server::health_reporter();
        reporter.set_service_status("ready", tonic_health::ServingStatus::Serving).await;
        reporter.set_service_status("draining", tonic_health::ServingStatus::NotServing).await;
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        tokio::spawn(tonic::transport::Server::builder().add_service(service).serve_with_incoming(incoming));
        let (status, output) = grpc("127.0.0.1", port, "ready", SECOND).await;
        assert_eq!(status, CheckStatus::Passing, "{output}");
        let (status, output) = grpc("127.0.0.1", port, "draining", SECOND).await;
        assert_eq!(status, CheckStatus::Critical);
        assert!(output.contains("NOT_SERVING"), "{output}");
        assert_eq!(grpc("127.0.0.1", port, "unknown", SECOND).await.0, CheckStatus::Critical, "NOT_FOUND");
    }

    #[test]
    fn script_exit_codes_as_consul_reads_them() {
        assert_eq!(script_status(0), CheckStatus::Passing);
        assert_eq!(script_status(1), CheckStatus::Warning);
        assert_eq!(script_status(2), CheckStatus::Critical);
        assert_eq!(script_status(137), CheckStatus::Critical);
    }
}
