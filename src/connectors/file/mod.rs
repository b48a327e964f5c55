//! Files: JSON lines read from a file or standard input ([`source`]), and appended to a file
//! ([`sink`]), cut back first on a thread of its own ([`cut`]).

pub mod cut;
pub mod sink;
pub mod source;
