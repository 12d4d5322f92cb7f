//! A tiny synchronous RESP2 client over `std::net::TcpStream`, with timeouts, for test plumbing
//! (checking state, writing fixtures). Binary-safe: arguments and values are bytes.
//!
//! Transport and protocol failures are `Err(String)`; a Redis error reply is
//! `Ok(RespValue::Error(..))`.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Connect, read and write timeout used by [`cmd`] and [`Conn::connect`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

const MAX_DEPTH: usize = 32;
const MAX_REDIRECTS: usize = 8;

/// A RESP2 reply. A null bulk string and a null array are both [`RespValue::Nil`].
#[derive(Clone, PartialEq, Eq)]
pub enum RespValue {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Vec<u8>),
    Nil,
    Array(Vec<RespValue>),
}

impl RespValue {
    pub fn is_error(&self) -> bool {
        matches!(self, RespValue::Error(_))
    }

    pub fn is_nil(&self) -> bool {
        matches!(self, RespValue::Nil)
    }

    /// True for `+OK`.
    pub fn is_ok(&self) -> bool {
        matches!(self, RespValue::Simple(s) if s == "OK")
    }

    /// Bytes of a simple or bulk string.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            RespValue::Simple(s) => Some(s.as_bytes()),
            RespValue::Bulk(b) => Some(b),
            _ => None,
        }
    }

    /// Text of a simple or bulk string (lossy UTF-8).
    pub fn as_text(&self) -> Option<String> {
        self.as_bytes()
            .map(|b| String::from_utf8_lossy(b).into_owned())
    }

    /// An integer reply, or a string reply holding an integer.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            RespValue::Int(i) => Some(*i),
            other => other.as_text().and_then(|t| t.trim().parse().ok()),
        }
    }

    pub fn as_array(&self) -> Option<&[RespValue]> {
        match self {
            RespValue::Array(items) => Some(items),
            _ => None,
        }
    }

    pub fn error_message(&self) -> Option<&str> {
        match self {
            RespValue::Error(e) => Some(e),
            _ => None,
        }
    }

    /// redis-cli-like rendering: strings as text, `(nil)`, arrays one item per line.
    pub fn to_display(&self) -> String {
        match self {
            RespValue::Simple(s) | RespValue::Error(s) => s.clone(),
            RespValue::Int(i) => i.to_string(),
            RespValue::Bulk(b) => String::from_utf8_lossy(b).into_owned(),
            RespValue::Nil => "(nil)".to_owned(),
            RespValue::Array(items) => items
                .iter()
                .map(RespValue::to_display)
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }

    /// A flat `[field, value, field, value, ...]` array (e.g. `SENTINEL MASTER`) as a map.
    pub fn to_field_map(&self) -> HashMap<String, String> {
        let items = self.as_array().unwrap_or(&[]);
        items
            .chunks(2)
            .filter_map(|pair| match pair {
                [k, v] => Some((k.as_text()?, v.to_display())),
                _ => None,
            })
            .collect()
    }
}

impl fmt::Debug for RespValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RespValue::Simple(s) => write!(f, "+{s}"),
            RespValue::Error(e) => write!(f, "-{e}"),
            RespValue::Int(i) => write!(f, ":{i}"),
            RespValue::Bulk(b) => write!(f, "b\"{}\"", b.escape_ascii()),
            RespValue::Nil => f.write_str("nil"),
            RespValue::Array(items) => f.debug_list().entries(items).finish(),
        }
    }
}

/// Encodes a command as a RESP array of bulk strings.
pub fn encode<A: AsRef<[u8]>>(args: &[A]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        let arg = arg.as_ref();
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Reads one RESP2 value.
pub fn read_value<R: BufRead>(reader: &mut R) -> Result<RespValue, String> {
    read_value_at_depth(reader, 0)
}

fn read_value_at_depth<R: BufRead>(reader: &mut R, depth: usize) -> Result<RespValue, String> {
    if depth > MAX_DEPTH {
        return Err("RESP nesting too deep".into());
    }
    let line = read_line(reader)?;
    let (kind, rest) = line.split_first().ok_or("empty RESP line")?;
    let text = || String::from_utf8_lossy(rest).into_owned();
    let length = || -> Result<i64, String> {
        text()
            .parse::<i64>()
            .map_err(|_| format!("bad RESP length {:?}", text()))
    };
    match kind {
        b'+' => Ok(RespValue::Simple(text())),
        b'-' => Ok(RespValue::Error(text())),
        b':' => text()
            .parse()
            .map(RespValue::Int)
            .map_err(|_| format!("bad RESP integer {:?}", text())),
        b'$' => match length()? {
            -1 => Ok(RespValue::Nil),
            n if n < 0 => Err(format!("bad bulk length {n}")),
            n => {
                let mut data = vec![0u8; n as usize + 2];
                reader.read_exact(&mut data).map_err(describe_io)?;
                if !data.ends_with(b"\r\n") {
                    return Err("bulk string not terminated by CRLF".into());
                }
                data.truncate(n as usize);
                Ok(RespValue::Bulk(data))
            }
        },
        b'*' => match length()? {
            -1 => Ok(RespValue::Nil),
            n if n < 0 => Err(format!("bad array length {n}")),
            n => (0..n)
                .map(|_| read_value_at_depth(reader, depth + 1))
                .collect::<Result<_, _>>()
                .map(RespValue::Array),
        },
        other => Err(format!("unsupported RESP type byte {:?}", *other as char)),
    }
}

fn read_line<R: BufRead>(reader: &mut R) -> Result<Vec<u8>, String> {
    let mut line = Vec::new();
    let n = reader.read_until(b'\n', &mut line).map_err(describe_io)?;
    if n == 0 {
        return Err("connection closed by peer".into());
    }
    if !line.ends_with(b"\r\n") {
        return Err(format!(
            "truncated RESP line {:?}",
            line.escape_ascii().to_string()
        ));
    }
    line.truncate(line.len() - 2);
    Ok(line)
}

fn describe_io(e: io::Error) -> String {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => format!("timed out ({e})"),
        io::ErrorKind::UnexpectedEof => "connection closed by peer".into(),
        _ => e.to_string(),
    }
}

fn command_name<A: AsRef<[u8]>>(args: &[A]) -> String {
    args.first()
        .map(|a| String::from_utf8_lossy(a.as_ref()).into_owned())
        .unwrap_or_default()
}

/// One connection to `127.0.0.1:port`. After any transport or protocol error the connection
/// is poisoned (its stream may be out of sync) and every later call fails.
pub struct Conn {
    port: u16,
    reader: BufReader<TcpStream>,
    poisoned: bool,
}

impl Conn {
    pub fn connect(port: u16) -> Result<Conn, String> {
        Conn::connect_timeout(port, DEFAULT_TIMEOUT)
    }

    /// Connects with `timeout` used for connecting, reading and writing.
    pub fn connect_timeout(port: u16, timeout: Duration) -> Result<Conn, String> {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let stream = TcpStream::connect_timeout(&addr, timeout)
            .map_err(|e| format!("connect to {addr}: {}", describe_io(e)))?;
        let _ = stream.set_nodelay(true);
        let mut conn = Conn {
            port,
            reader: BufReader::new(stream),
            poisoned: false,
        };
        conn.set_timeout(timeout)?;
        Ok(conn)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Sets the read and write timeout.
    pub fn set_timeout(&mut self, timeout: Duration) -> Result<(), String> {
        let stream = self.reader.get_ref();
        stream
            .set_read_timeout(Some(timeout))
            .and_then(|_| stream.set_write_timeout(Some(timeout)))
            .map_err(|e| e.to_string())
    }

    /// Sends one command and reads its reply.
    pub fn cmd<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Result<RespValue, String> {
        if self.poisoned {
            return Err(format!(
                "127.0.0.1:{} {}: connection unusable after an earlier error",
                self.port,
                command_name(args)
            ));
        }
        let result = self
            .reader
            .get_mut()
            .write_all(&encode(args))
            .map_err(describe_io)
            .and_then(|_| read_value(&mut self.reader));
        result.map_err(|e| {
            self.poisoned = true;
            format!("127.0.0.1:{} {}: {e}", self.port, command_name(args))
        })
    }
}

/// Runs one command on a fresh connection with [`DEFAULT_TIMEOUT`].
pub fn cmd<A: AsRef<[u8]>>(port: u16, args: &[A]) -> Result<RespValue, String> {
    cmd_timeout(port, args, DEFAULT_TIMEOUT)
}

/// Keys matching `pattern` on the servers at `ports`, via `SCAN ... MATCH pattern COUNT 1000`
/// (never KEYS). Sorted and deduplicated (as bytes), then lossy UTF-8. Panics if a server
/// cannot be reached or answers something else.
pub fn scan_keys(ports: &[u16], pattern: &str) -> Vec<String> {
    let mut keys = BTreeSet::new();
    for &port in ports {
        let mut cursor = String::from("0");
        loop {
            let reply = cmd(port, &["SCAN", &cursor, "MATCH", pattern, "COUNT", "1000"])
                .unwrap_or_else(|e| panic!("SCAN on {port}: {e}"));
            match reply.as_array() {
                Some([next, RespValue::Array(batch)]) => {
                    keys.extend(
                        batch
                            .iter()
                            .filter_map(|k| k.as_bytes().map(<[u8]>::to_vec)),
                    );
                    cursor = next.as_text().unwrap_or_default();
                }
                _ => panic!("SCAN on {port} answered {reply:?}"),
            }
            if cursor == "0" {
                break;
            }
        }
    }
    keys.into_iter()
        .map(|k| String::from_utf8_lossy(&k).into_owned())
        .collect()
}

/// Runs one command on a fresh connection; `timeout` bounds connect, write and read.
pub fn cmd_timeout<A: AsRef<[u8]>>(
    port: u16,
    args: &[A],
    timeout: Duration,
) -> Result<RespValue, String> {
    Conn::connect_timeout(port, timeout)?.cmd(args)
}

/// Runs one command and renders the reply like redis-cli ([`RespValue::to_display`]).
/// Panics on a transport error or an error reply.
pub fn cmd_str<A: AsRef<[u8]>>(port: u16, args: &[A]) -> String {
    match cmd(port, args) {
        Ok(RespValue::Error(e)) => {
            panic!("127.0.0.1:{port} {}: error reply: {e}", command_name(args))
        }
        Ok(value) => value.to_display(),
        Err(e) => panic!("{e}"),
    }
}

/// Parses `INFO` / `CLUSTER INFO` text into field → value.
pub fn parse_info(text: &str) -> HashMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// `INFO section` as a map.
pub fn info(port: u16, section: &str) -> Result<HashMap<String, String>, String> {
    match cmd(port, &["INFO", section])? {
        RespValue::Bulk(text) => Ok(parse_info(&String::from_utf8_lossy(&text))),
        other => Err(format!(
            "127.0.0.1:{port} INFO {section}: unexpected reply {other:?}"
        )),
    }
}

/// One field of `INFO section`; `None` if the server is unreachable or lacks the field.
pub fn info_field(port: u16, section: &str, field: &str) -> Option<String> {
    info(port, section).ok()?.remove(field)
}

/// Runs a command against a cluster starting at `seed_port`, following `-MOVED` and `-ASK`
/// redirects (at most 8). Other replies, including `-CLUSTERDOWN`, are returned as they are.
pub fn cluster_cmd<A: AsRef<[u8]>>(seed_port: u16, args: &[A]) -> Result<RespValue, String> {
    let mut port = seed_port;
    let mut asking = false;
    for _ in 0..=MAX_REDIRECTS {
        let reply = if asking {
            let mut conn = Conn::connect(port)?;
            conn.cmd(&["ASKING"])?;
            conn.cmd(args)?
        } else {
            cmd(port, args)?
        };
        let redirect = match &reply {
            RespValue::Error(e) if e.starts_with("MOVED ") || e.starts_with("ASK ") => e.clone(),
            _ => return Ok(reply),
        };
        asking = redirect.starts_with("ASK ");
        port = redirect
            .rsplit(' ')
            .next()
            .and_then(|addr| addr.rsplit_once(':'))
            .and_then(|(_, p)| p.parse().ok())
            .ok_or_else(|| format!("cannot parse redirect {redirect:?}"))?;
    }
    Err(format!(
        "{}: more than {MAX_REDIRECTS} cluster redirects",
        command_name(args)
    ))
}
