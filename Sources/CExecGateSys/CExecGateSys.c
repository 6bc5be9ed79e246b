#include "CExecGateSys.h"
