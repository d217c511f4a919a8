//! The mechanism that confines one plugin process.
