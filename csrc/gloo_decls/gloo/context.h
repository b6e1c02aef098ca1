// Stands in for gloo's header of this name (see ../README.md): the one member function an inline
// function of c10d's ProcessGroupGloo mentions.
#pragma once

#include <chrono>

namespace gloo {

class Context {
 public:
  void setTimeout(std::chrono::milliseconds timeout);
};

}  // namespace gloo
