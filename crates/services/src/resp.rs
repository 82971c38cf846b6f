//! A minimal RESP2 client over a blocking [`TcpStream`]: enough for health checks and test
//! set-up commands, one connection per command.

use std::io::{BufReader, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::error::ServiceError;

/// How long connecting, writing and reading a reply may each take.
pub(crate) const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest bulk string or array accepted, to bound memory on a garbled reply.
const MAX_LEN: usize = 512 << 20;

/// Deepest nesting of arrays accepted.
const MAX_DEPTH: usize = 32;

/// A reply of a Redis server (RESP2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// A simple string (`+OK`).
    Simple(String),
    /// An error inside an array (a top-level error is returned as [`ServiceError::Redis`]).
    Error(String),
    /// An integer (`:1`).
    Integer(i64),
    /// A bulk string.
    Bulk(Vec<u8>),
    /// The null bulk string or null array.
    Nil,
    /// An array.
    Array(Vec<Reply>),
}

impl Reply {
    /// The reply as text: strings as they are (bulk strings decoded as lossy UTF-8), integers
    /// in decimal, nil as the empty string, and arrays as their elements' texts, one per line.
    #[must_use]
    pub fn to_text(&self) -> String {
        match self {
            Reply::Simple(text) | Reply::Error(text) => text.clone(),
            Reply::Integer(value) => value.to_string(),
            Reply::Bulk(bytes) => String::from_utf8_lossy(bytes).into_owned(),
            Reply::Nil => String::new(),
            Reply::Array(items) => items
                .iter()
                .map(Reply::to_text)
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }
}

/// The command as text, for messages: arguments separated by spaces, lossy UTF-8, long
/// arguments shortened.
pub(crate) fn command_text<A: AsRef<[u8]>>(args: &[A]) -> String {
    args.iter()
        .map(|arg| {
            let text = String::from_utf8_lossy(arg.as_ref());
            if text.chars().count() > 40 {
                format!("{}...", text.chars().take(40).collect::<String>())
            } else {
                text.into_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Encodes `args` as a RESP array of bulk strings.
pub(crate) fn encode<A: AsRef<[u8]>>(args: &[A]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        let arg = arg.as_ref();
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Sends one command to `addr` on a new connection and reads its reply.
pub(crate) fn request<A: AsRef<[u8]>>(
    addr: SocketAddr,
    args: &[A],
    timeout: Duration,
) -> Result<Reply, ServiceError> {
    let io_err = |what: &str, err| {
        ServiceError::io(
            format!("{what} Redis at {addr} (`{}`)", command_text(args)),
            err,
        )
    };
    let stream =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| io_err("connecting to", e))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .and_then(|()| stream.set_nodelay(true))
        .map_err(|e| io_err("configuring the connection to", e))?;
    (&stream)
        .write_all(&encode(args))
        .map_err(|e| io_err("writing to", e))?;
    let mut reader = BufReader::new(&stream);
    match read_reply(&mut reader, 0) {
        Ok(Reply::Error(message)) => Err(ServiceError::Redis {
            addr,
            command: command_text(args),
            message,
        }),
        Ok(reply) => Ok(reply),
        Err(ReadError::Io(err)) => Err(io_err("reading the reply of", err)),
        Err(ReadError::Protocol(detail)) => Err(ServiceError::Protocol { addr, detail }),
    }
}

/// Why reading a reply failed.
pub(crate) enum ReadError {
    /// The connection failed.
    Io(std::io::Error),
    /// The bytes are not RESP2.
    Protocol(String),
}

impl From<std::io::Error> for ReadError {
    fn from(err: std::io::Error) -> Self {
        ReadError::Io(err)
    }
}

/// Reads one line without its `\r\n`.
fn read_line(reader: &mut impl std::io::BufRead) -> Result<String, ReadError> {
    let mut line = Vec::new();
    reader.read_until(b'\n', &mut line)?;
    if line.is_empty() {
        return Err(ReadError::Protocol(
            "the connection was closed before a reply".to_owned(),
        ));
    }
    if !line.ends_with(b"\r\n") {
        return Err(ReadError::Protocol(format!(
            "a reply line does not end with CRLF: {:?}",
            String::from_utf8_lossy(&line)
        )));
    }
    line.truncate(line.len() - 2);
    String::from_utf8(line)
        .map_err(|err| ReadError::Protocol(format!("a reply line is not UTF-8: {err}")))
}

/// Parses a length of a bulk string or array: `-1` for nil, else at most [`MAX_LEN`].
fn parse_len(text: &str) -> Result<Option<usize>, ReadError> {
    if text == "-1" {
        return Ok(None);
    }
    match text.parse::<usize>() {
        Ok(len) if len <= MAX_LEN => Ok(Some(len)),
        _ => Err(ReadError::Protocol(format!("invalid length {text:?}"))),
    }
}

/// Reads one reply; `depth` is the array nesting level.
pub(crate) fn read_reply(
    reader: &mut impl std::io::BufRead,
    depth: usize,
) -> Result<Reply, ReadError> {
    if depth > MAX_DEPTH {
        return Err(ReadError::Protocol("arrays nested too deeply".to_owned()));
    }
    let line = read_line(reader)?;
    let mut chars = line.chars();
    let kind = chars.next();
    let rest = chars.as_str();
    match kind {
        Some('+') => Ok(Reply::Simple(rest.to_owned())),
        Some('-') => Ok(Reply::Error(rest.to_owned())),
        Some(':') => rest
            .parse()
            .map(Reply::Integer)
            .map_err(|_| ReadError::Protocol(format!("invalid integer {rest:?}"))),
        Some('$') => match parse_len(rest)? {
            None => Ok(Reply::Nil),
            Some(len) => {
                let mut data = vec![0; len + 2];
                reader.read_exact(&mut data)?;
                if !data.ends_with(b"\r\n") {
                    return Err(ReadError::Protocol(
                        "a bulk string does not end with CRLF".to_owned(),
                    ));
                }
                data.truncate(len);
                Ok(Reply::Bulk(data))
            }
        },
        Some('*') => match parse_len(rest)? {
            None => Ok(Reply::Nil),
            Some(len) => {
                let mut items = Vec::with_capacity(len.min(1024));
                for _ in 0..len {
                    items.push(read_reply(reader, depth + 1)?);
                }
                Ok(Reply::Array(items))
            }
        },
        _ => Err(ReadError::Protocol(format!(
            "unknown reply type in line {line:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::{Reply, encode, read_reply};

    /// Parses one reply from `bytes`.
    fn parse(bytes: &[u8]) -> Option<Reply> {
        read_reply(&mut &bytes[..], 0).ok()
    }

    #[test]
    fn encodes_commands_as_arrays_of_bulk_strings() {
        assert_eq!(encode(&["PING"]), b"*1\r\n$4\r\nPING\r\n");
        let garbage: &[u8] = &[0xff, b'\r', b'\n'];
        assert_eq!(
            encode(&[&b"SET"[..], b"k", garbage]),
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\n\xff\r\n\r\n"
        );
    }

    #[test]
    fn reads_every_reply_type() {
        assert_eq!(parse(b"+PONG\r\n"), Some(Reply::Simple("PONG".into())));
        assert_eq!(parse(b"-ERR no\r\n"), Some(Reply::Error("ERR no".into())));
        assert_eq!(parse(b":-12\r\n"), Some(Reply::Integer(-12)));
        assert_eq!(
            parse(b"$3\r\na\r\n\r\n"),
            Some(Reply::Bulk(b"a\r\n".to_vec()))
        );
        assert_eq!(parse(b"$-1\r\n"), Some(Reply::Nil));
        let array = parse(b"*3\r\n$6\r\nmaster\r\n:5\r\n*0\r\n").unwrap();
        assert_eq!(
            array,
            Reply::Array(vec![
                Reply::Bulk(b"master".to_vec()),
                Reply::Integer(5),
                Reply::Array(Vec::new()),
            ])
        );
        assert_eq!(array.to_text(), "master\n5\n");
        for bad in [
            &b""[..],
            b"+OK",
            b"?x\r\n",
            b"$5\r\nab\r\n",
            b"*2\r\n:1\r\n",
            b":x\r\n",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }
}
