// Stands in for gloo's header of this name (see ../../README.md): c10d's ProcessGroupGloo.hpp
// needs nothing from it.
#pragma once
