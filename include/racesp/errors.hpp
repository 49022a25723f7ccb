// Typed errors. Every error a user can cause is one of these, with a message that names the
// problem in one line; the command-line front end prints what() and exits non-zero.
#pragma once

#include <stdexcept>
#include <string>

namespace racesp {

class Error : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// An option value out of range (P outside 1..10, L < 1, beta <= 0, eps < 0, ...).
class ConfigError : public Error {
public:
    using Error::Error;
};

// Tensors whose shapes do not fit together.
class ShapeError : public Error {
public:
    using Error::Error;
};

// Bad input data or files: missing dataset, NaN, unreadable file, ...
class InputError : public Error {
public:
    using Error::Error;
};

}  // namespace racesp
