//! The wall clock in the unit every stored and compared time uses: Unix
//! seconds (BIGINT columns, `allowed_until`, expiry, grace periods).

/// Now, in Unix seconds.
pub fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}
