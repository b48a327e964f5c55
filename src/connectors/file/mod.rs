//! Files: JSON lines read from a file or standard input ([`source`]), and appended to a file
//! ([`sink`]).

pub mod sink;
pub mod source;
