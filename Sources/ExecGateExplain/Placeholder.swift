// SPDX-License-Identifier: Apache-2.0
// Placeholder so the target builds while it is being written; removed when the first real file lands.
enum _ExecGateExplainPlaceholder {}
