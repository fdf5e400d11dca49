#pragma once
// Internal code includes the public header for fastdemucs::Error.
#include "fastdemucs/fastdemucs.h"
