// Stands in for gloo's header of this name (see ../../README.md): types c10d holds only through
// smart pointers, left incomplete.
#pragma once

namespace gloo {
namespace transport {

class Device;
class UnboundBuffer;

}  // namespace transport
}  // namespace gloo
