#include "CDecompress.h"
