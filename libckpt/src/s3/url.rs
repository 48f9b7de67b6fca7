//! `s3://BUCKET/PREFIX`: where the S3 tier keeps its objects.

use std::fmt;

/// A checked bucket and key prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Url {
    pub bucket: String,
    /// Key prefix without leading or trailing `/`; may be empty.
    pub prefix: String,
}

/// Why an `s3://` address is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{url:?} is not a usable S3 address: {reason} (expected s3://BUCKET[/PREFIX])")]
pub struct UrlError {
    pub url: String,
    pub reason: String,
}

/// Longest address accepted: S3 keys are at most 1024 bytes, and ours add
/// the layout's own components after the prefix.
const MAX_URL: usize = 512;

impl S3Url {
    /// Parse and check. Never panics, whatever the text.
    pub fn parse(text: &str) -> Result<S3Url, UrlError> {
        let fail = |reason: &str| UrlError {
            url: text.chars().take(MAX_URL).collect(),
            reason: reason.to_owned(),
        };
        if text.len() > MAX_URL {
            return Err(fail("it is longer than 512 bytes"));
        }
        let rest = text
            .strip_prefix("s3://")
            .ok_or_else(|| fail("it does not start with s3://"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        check_bucket(bucket).map_err(|r| fail(&r))?;
        let prefix = prefix.trim_end_matches('/');
        if !prefix.is_empty() {
            for seg in prefix.split('/') {
                check_segment(seg).map_err(|r| fail(&r))?;
            }
        }
        Ok(S3Url {
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
        })
    }
}

/// S3's bucket naming rules (the portable subset every store accepts).
fn check_bucket(b: &str) -> Result<(), String> {
    if !(3..=63).contains(&b.len()) {
        return Err(format!("bucket name {b:?} must be 3 to 63 characters"));
    }
    let ok = b
        .bytes()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.');
    let edge = |c: Option<u8>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !ok || !edge(b.bytes().next()) || !edge(b.bytes().last()) || b.contains("..") {
        return Err(format!(
            "bucket name {b:?} may hold only lowercase letters, digits, '-' and '.', \
             and must start and end with a letter or digit"
        ));
    }
    Ok(())
}

fn check_segment(seg: &str) -> Result<(), String> {
    if seg.is_empty() {
        return Err("the prefix has an empty component (\"//\")".into());
    }
    if seg == "." || seg == ".." {
        return Err(format!("the prefix has a {seg:?} component"));
    }
    if !seg
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
    {
        return Err(format!(
            "prefix component {seg:?} may hold only letters, digits, '-', '_' and '.'"
        ));
    }
    Ok(())
}

impl fmt::Display for S3Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.prefix.is_empty() {
            write!(f, "s3://{}", self.bucket)
        } else {
            write!(f, "s3://{}/{}", self.bucket, self.prefix)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_addresses() {
        let u = S3Url::parse("s3://ckpt-dr/site-a/cluster1/").unwrap();
        assert_eq!(u.bucket, "ckpt-dr");
        assert_eq!(u.prefix, "site-a/cluster1");
        assert_eq!(u.to_string(), "s3://ckpt-dr/site-a/cluster1");
        let u = S3Url::parse("s3://abc").unwrap();
        assert_eq!((u.bucket.as_str(), u.prefix.as_str()), ("abc", ""));
        assert_eq!(u.to_string(), "s3://abc");
        assert_eq!(S3Url::parse("s3://abc/").unwrap().prefix, "");
    }

    #[test]
    fn bad_addresses_say_why() {
        for (text, why) in [
            ("http://abc/x", "s3://"),
            ("s3://ab", "3 to 63"),
            ("s3://ABC", "lowercase"),
            ("s3://-abc", "start and end"),
            ("s3://a..b", "lowercase"),
            ("s3://abc//x", "empty component"),
            ("s3://abc/x/../y", "\"..\""),
            ("s3://abc/x y", "letters"),
            ("", "s3://"),
        ] {
            let e = S3Url::parse(text).unwrap_err();
            assert!(e.to_string().contains(why), "{text}: {e}");
        }
        assert!(S3Url::parse(&format!("s3://abc/{}", "x".repeat(600))).is_err());
    }
}
