// Precompiled header shared by every target: the torch headers dominate build time.
#pragma once
#include <torch/torch.h>
