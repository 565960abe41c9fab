//! Schema pieces shared by the request and response types, so the OpenAPI document states
//! the same rules the validators apply: identifiers, printable text, e-mail addresses and
//! the ids that are numbers when they look like numbers.

use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, Type};
use utoipa::openapi::RefOr;

/// An identifier: no control character (C0, DEL, C1), at least one character.
pub const ID_PATTERN: &str = r"^[^\u0000-\u001F\u007F-\u009F]+$";
/// Printable text with at least one non-space character (values are trimmed).
pub const TEXT_PATTERN: &str = r"^[^\u0000-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u001F\u007F-\u009F]*$";
/// An e-mail address as `tenancy::valid_email` takes it.
pub const EMAIL_PATTERN: &str = r"^[^@\s\u0000-\u001F\u007F-\u009F]+@[^@\s.\u0000-\u001F\u007F-\u009F][^@\s\u0000-\u001F\u007F-\u009F]*\.[^@\s\u0000-\u001F\u007F-\u009F]*[^@\s.\u0000-\u001F\u007F-\u009F]$";

fn integer() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .minimum(Some(i64::MIN))
        .maximum(Some(u64::MAX))
}

fn id_string() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(128))
        .pattern(Some(ID_PATTERN))
}

fn null() -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::Null)
}

/// `schema`, or null.
fn or_null(schema: RefOr<Schema>) -> RefOr<Schema> {
    OneOfBuilder::new().item(schema).item(null()).into()
}

/// A tracked user or project id as clients send it: a string of 1 to 128 characters or
/// an integer.
pub fn id_input() -> RefOr<Schema> {
    OneOfBuilder::new().item(integer()).item(id_string()).into()
}

/// `id_input`, or null.
pub fn id_input_or_null() -> RefOr<Schema> {
    or_null(id_input())
}

/// The same id as answers show it: a number when it is a canonical integer, else a string.
pub fn id_output() -> RefOr<Schema> {
    OneOfBuilder::new()
        .item(integer())
        .item(ObjectBuilder::new().schema_type(Type::String))
        .into()
}

/// `id_output`, or null.
pub fn id_output_or_null() -> RefOr<Schema> {
    or_null(id_output())
}

/// An instant as the filters take it: an RFC 3339 date-time, or a date (midnight UTC).
pub fn date_or_time() -> RefOr<Schema> {
    use utoipa::openapi::schema::{AnyOfBuilder, KnownFormat, SchemaFormat};
    AnyOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime))),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .format(Some(SchemaFormat::KnownFormat(KnownFormat::Date))),
        )
        .into()
}

/// A dollar amount from 0 to 1,000,000: an exact decimal string with up to 9 places, or
/// a JSON number (rounded to the nano-dollar).
pub fn usd_amount() -> RefOr<Schema> {
    OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Number)
                .minimum(Some(0))
                .maximum(Some(1_000_000)),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(r"^(\d{1,6}(\.\d{1,9})?|1000000(\.0{1,9})?)$")),
        )
        .into()
}

/// `usd_amount`, or null.
pub fn usd_amount_or_null() -> RefOr<Schema> {
    or_null(usd_amount())
}

/// `date_or_time`, or null.
pub fn date_or_time_or_null() -> RefOr<Schema> {
    or_null(date_or_time())
}

/// `true`, or null: a flag that may only confirm the default.
pub fn true_or_null() -> RefOr<Schema> {
    OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Boolean)
                .enum_values(Some([true])),
        )
        .item(null())
        .into()
}
