//! Browser bindings for the filter inspector (issue 7); empty for now.
