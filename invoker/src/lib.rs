//! The data path arrives with issue 3.
