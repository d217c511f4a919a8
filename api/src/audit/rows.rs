//! Rows handed to SQLite as one JSON text: the writer's batch inserts.
//!
//! Every SQL statement is a round trip to the connection's worker thread
//! (sqlx runs SQLite on a thread of its own), ~40-60 µs on this host
//! whatever the statement does. A multi-row `INSERT ... VALUES` needs a
//! statement text per row count, so a batch of 37 rows took four of them
//! (16 + 16 + 4 + 1). `INSERT ... SELECT value->>0, ... FROM jsonb_each(?)`
//! takes any number of rows in one constant text, so the batch's inserts,
//! its head update and its `COMMIT` go in one round trip
//! ([`Deferred`] statements first). `jsonb_each` rather than `json_each`:
//! it hands each row over in SQLite's binary JSON, so the `->>` of every
//! field does not parse the row's text again (with `json_each` the
//! connection's thread spent more on parsing than the round trips saved).
//!
//! SQLite's `->>` returns a JSON string as the exact text (escapes,
//! including `\u0000`, decoded), a JSON integer as an INTEGER (64-bit) and
//! `null` as NULL, so a row stores what binding its values stored before.

/// A JSON array of arrays, one inner array per row, built field by field
/// (texts escaped by `serde_json`).
#[derive(Debug, Default)]
pub(crate) struct JsonRows {
    buf: Vec<u8>,
    rows: usize,
    /// Fields in the current row so far.
    fields: usize,
}

impl JsonRows {
    /// An empty array with room for `rows` rows of about `row_bytes` each.
    pub(crate) fn with_capacity(rows: usize, row_bytes: usize) -> JsonRows {
        JsonRows {
            buf: Vec::with_capacity(2 + rows.saturating_mul(row_bytes)),
            rows: 0,
            fields: 0,
        }
    }

    /// Starts the next row (ending the previous one).
    pub(crate) fn row(&mut self) {
        self.buf
            .extend_from_slice(if self.rows == 0 { b"[[" } else { b"],[" });
        self.rows += 1;
        self.fields = 0;
    }

    fn sep(&mut self) {
        if self.fields > 0 {
            self.buf.push(b',');
        }
        self.fields += 1;
    }

    /// An integer field.
    pub(crate) fn int(&mut self, v: i64) {
        use std::io::Write as _;
        self.sep();
        // Writing to a Vec cannot fail.
        let _ = write!(self.buf, "{v}");
    }

    /// An integer field or `null`.
    pub(crate) fn opt_int(&mut self, v: Option<i64>) {
        match v {
            Some(v) => self.int(v),
            None => self.null(),
        }
    }

    /// A `null` field.
    pub(crate) fn null(&mut self) {
        self.sep();
        self.buf.extend_from_slice(b"null");
    }

    /// A text field.
    pub(crate) fn text(&mut self, s: &str) {
        self.sep();
        // Serializing a str into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut self.buf, s);
    }

    /// A text field or `null`.
    pub(crate) fn opt_text(&mut self, s: Option<&str>) {
        match s {
            Some(s) => self.text(s),
            None => self.null(),
        }
    }

    /// The JSON text (`[]` without rows).
    pub(crate) fn finish(mut self) -> String {
        if self.rows == 0 {
            return "[]".to_owned();
        }
        self.buf.extend_from_slice(b"]]");
        // Only `&str` texts, integers and ASCII went in: valid UTF-8.
        String::from_utf8(self.buf)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    }
}

/// One value bound to a [`Deferred`] statement.
#[derive(Debug, Clone)]
pub(crate) enum DeferredArg {
    /// A TEXT value.
    Text(String),
    /// A BLOB value.
    Blob(Vec<u8>),
}

/// A statement a deferring change left for the writer (see
/// [`super::FlushHook`]): one SQL statement whose positional `?`
/// parameters take `args` in order. The writer runs it on its own before a
/// change that may read its rows, else in the batch's last round trip.
#[derive(Debug, Clone)]
pub(crate) struct Deferred {
    pub sql: &'static str,
    pub args: Vec<DeferredArg>,
}

impl Deferred {
    /// Runs this statement alone on `conn`; `op` names it in the error.
    pub(crate) async fn execute(
        self,
        conn: &mut sqlx::sqlite::SqliteConnection,
        op: &'static str,
    ) -> Result<(), super::AuditError> {
        let sql = self.sql;
        self.bind_to(sqlx::query(sql))
            .execute(conn)
            .await
            .map_err(|source| super::AuditError::Db { op, source })?;
        Ok(())
    }

    /// Binds this statement's arguments to `query` (after those it has).
    pub(crate) fn bind_to<'q>(
        self,
        mut query: sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments>,
    ) -> sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments> {
        for a in self.args {
            query = match a {
                DeferredArg::Text(t) => query.bind(t),
                DeferredArg::Blob(b) => query.bind(b),
            };
        }
        query
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use sqlx::{Connection, Row};

    #[test]
    fn rows_are_a_json_array_of_arrays() {
        assert_eq!(JsonRows::default().finish(), "[]");
        let mut j = JsonRows::default();
        j.row();
        j.int(-3);
        j.null();
        j.text("a\"b");
        j.row();
        j.opt_int(None);
        j.opt_text(Some("\u{1}"));
        let text = j.finish();
        assert_eq!(text, r#"[[-3,null,"a\"b"],[null,"\u0001"]]"#);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v[0][2], "a\"b");
    }

    /// Every text SQLite reads back through `->>` is byte for byte the text
    /// written (what the hash chain needs: the stored row is re-hashed).
    #[tokio::test]
    async fn sqlite_reads_back_every_text_exactly() {
        let samples = [
            "",
            "plain",
            "quote \" backslash \\ slash /",
            "nul \0 inside",
            "controls \u{1}\u{8}\u{c}\n\r\t\u{1f} end",
            "unicode é 😀 \u{2028} \u{feff} \u{7f}",
            "trailing backslash \\",
        ];
        let mut j = JsonRows::default();
        for (i, s) in samples.iter().enumerate() {
            j.row();
            j.int(i64::try_from(i).unwrap());
            j.text(s);
            j.int(i64::MAX);
            j.int(i64::MIN);
        }
        let mut conn = sqlx::SqliteConnection::connect("sqlite::memory:")
            .await
            .unwrap();
        let rows = sqlx::query(
            "SELECT value->>0, value->>1, typeof(value->>1), value->>2, value->>3 \
             FROM jsonb_each(?) ORDER BY key",
        )
        .bind(j.finish())
        .fetch_all(&mut conn)
        .await
        .unwrap();
        assert_eq!(rows.len(), samples.len());
        for (row, s) in rows.iter().zip(samples) {
            let text: String = row.get(1);
            assert_eq!(text, s);
            let kind: String = row.get(2);
            assert_eq!(kind, "text");
            assert_eq!(row.get::<i64, _>(3), i64::MAX);
            assert_eq!(row.get::<i64, _>(4), i64::MIN);
        }
    }
}
