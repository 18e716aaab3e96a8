// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";

/// @title FeeOnTransferToken
/// @notice TEST ONLY. An ERC-20 that keeps 1 % of every transfer, to prove the escrow refuses
/// tokens that deliver less than was sent. The fee can be switched off and on again, as some real
/// tokens' owners can, so a job funded while it was off meets it on a later pull.
contract FeeOnTransferToken is ERC20 {
    bool private _feeDisabled;

    constructor() ERC20("fee on transfer", "FEE") {}

    /// @notice Mint freely (test token).
    function mint(address to, uint256 amount) external {
        _mint(to, amount);
    }

    /// @notice Switch the fee on (the default) or off. Anyone may (test token).
    function setFeeEnabled(bool enabled) external {
        _feeDisabled = !enabled;
    }

    function _update(address from, address to, uint256 value) internal override {
        if (from == address(0) || to == address(0) || _feeDisabled) {
            super._update(from, to, value);
            return;
        }
        uint256 fee = value / 100;
        super._update(from, address(0xFEE), fee);
        super._update(from, to, value - fee);
    }
}
