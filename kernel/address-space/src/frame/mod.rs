//! Physical frame allocator (being written).
