//! Secrets kept out of text meant for people: every URL a tier shows in an error message, a
//! `Debug` form or a log line goes through [`url`] first.
//!
//! ```
//! use tierkit_core::redact;
//!
//! assert_eq!(
//!     redact::url("redis-sentinel://u:pw@h:26379?sentinelServiceName=x&sentinelPassword=pw"),
//!     "redis-sentinel://***@h:26379?sentinelServiceName=x&sentinelPassword=***"
//! );
//! assert_eq!(redact::url("user:pw@host"), redact::NOT_A_URL);
//! ```

/// What [`url`] shows instead of text that is not a URL it can take apart (no `scheme://`):
/// such text could hold a secret anywhere.
pub const NOT_A_URL: &str = "(not a URL)";

/// What a secret is replaced with.
pub const REDACTED: &str = "***";

/// The words that make a query parameter's name secret, in lower case.
const SECRET_WORDS: [&str; 5] = ["password", "passwd", "pwd", "token", "secret"];

/// Whether a query parameter named `name` carries a secret: its name, percent-decoded and in
/// lower case, contains `password`, `passwd`, `pwd`, `token` or `secret`
/// (`sentinelPassword`, `authToken`, `client_secret`, `X-Amz-Security-Token`...).
#[must_use]
pub fn is_secret_name(name: &str) -> bool {
    let name = percent_decode(name).to_lowercase();
    SECRET_WORDS.iter().any(|word| name.contains(word))
}

/// `url` fit to show: the user-info (`user:password@`) replaced by `***@`, the value of every
/// query or fragment parameter with a [secret name](is_secret_name) replaced by `***`; text
/// that is not `scheme://...` is replaced whole by [`NOT_A_URL`].
#[must_use]
pub fn url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return NOT_A_URL.to_owned();
    };
    let authority_start = scheme_end + 3;
    let rest = &url[authority_start..];
    let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_len);
    let mut out = String::with_capacity(url.len());
    out.push_str(&url[..authority_start]);
    match authority.rfind('@') {
        Some(at) => {
            out.push_str(REDACTED);
            out.push_str(&authority[at..]);
        }
        None => out.push_str(authority),
    }
    // The path, then the query and the fragment with their secret values replaced.
    let (before_fragment, fragment) = match tail.find('#') {
        Some(at) => (&tail[..at], Some(&tail[at + 1..])),
        None => (tail, None),
    };
    match before_fragment.find('?') {
        Some(at) => {
            out.push_str(&before_fragment[..=at]);
            push_params(&before_fragment[at + 1..], &mut out);
        }
        None => out.push_str(before_fragment),
    }
    if let Some(fragment) = fragment {
        out.push('#');
        push_params(fragment, &mut out);
    }
    out
}

/// Appends `params` (`name=value` pairs separated by `&` or `;`) with secret values replaced.
fn push_params(params: &str, out: &mut String) {
    let mut rest = params;
    loop {
        let end = rest.find(['&', ';']).unwrap_or(rest.len());
        let param = &rest[..end];
        match param.split_once('=') {
            Some((name, _)) if is_secret_name(name) => {
                out.push_str(name);
                out.push('=');
                out.push_str(REDACTED);
            }
            _ => out.push_str(param),
        }
        let Some(separator) = rest[end..].chars().next() else {
            return;
        };
        out.push(separator);
        rest = &rest[end + 1..];
    }
}

/// `text` with its `%XX` escapes decoded (and `+` as a space), invalid UTF-8 replaced.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |at: usize| bytes.get(at).and_then(|b| char::from(*b).to_digit(16));
        match (bytes[i], hex(i + 1), hex(i + 2)) {
            (b'%', Some(high), Some(low)) => {
                // Two hex digits: at most 0xff.
                out.push(u8::try_from(high * 16 + low).unwrap_or(u8::MAX));
                i += 3;
            }
            (b'+', _, _) => {
                out.push(b' ');
                i += 1;
            }
            (byte, _, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_info_is_redacted() {
        assert_eq!(
            url("redis://user:s3cret@host:6379/1"),
            "redis://***@host:6379/1"
        );
        assert_eq!(url("redis://:s3cret@host"), "redis://***@host");
        assert_eq!(url("redis://a@b@host/x"), "redis://***@host/x");
        assert_eq!(
            url("redis-cluster://u:p@a:1?node=b:2&node=c:3"),
            "redis-cluster://***@a:1?node=b:2&node=c:3"
        );
        assert_eq!(url("redis://host:6379"), "redis://host:6379");
        // An `@` after the authority is not user info.
        assert_eq!(url("redis://host:6379?x=a@b"), "redis://host:6379?x=a@b");
    }

    #[test]
    fn secret_parameters_are_redacted() {
        assert_eq!(
            url("redis-sentinel://h:26379?sentinelServiceName=x&sentinelPassword=s3cret"),
            "redis-sentinel://h:26379?sentinelServiceName=x&sentinelPassword=***"
        );
        assert_eq!(
            url("https://h/?X-Amz-Security-Token=t0k&a=1;client_secret=s;PWD=p#access_token=t"),
            "https://h/?X-Amz-Security-Token=***&a=1;client_secret=***;PWD=***#access_token=***"
        );
        assert_eq!(
            url("redis://h?Sentinel%50assword=s&pass%77ord=s&x"),
            "redis://h?Sentinel%50assword=***&pass%77ord=***&x"
        );
        assert_eq!(url("redis://h?a=b&&c=d&"), "redis://h?a=b&&c=d&");
        assert_eq!(url("redis://h?"), "redis://h?");
        assert_eq!(url("redis://h#"), "redis://h#");
    }

    #[test]
    fn text_that_is_not_a_url_is_not_shown() {
        for text in ["user:pw@host", "p@ss", "", "not a url s3cret"] {
            assert_eq!(url(text), NOT_A_URL, "{text:?}");
        }
    }

    #[test]
    fn secret_names() {
        for name in [
            "password",
            "sentinelPassword",
            "authToken",
            "x%2Dtoken",
            "SECRET",
        ] {
            assert!(is_secret_name(name), "{name}");
        }
        for name in ["node", "sentinelServiceName", "db", "%ZZ", "%"] {
            assert!(!is_secret_name(name), "{name}");
        }
    }
}
